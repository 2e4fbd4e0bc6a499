@testable import ControlAPI
import Glibc
import HostSystem
import Testing
import VMM

@Suite struct ObservabilityTests {
    func temporaryPath(_ name: String) -> String { "/tmp/kestrel-obs-\(getpid())-\(name)" }

    func contents(_ path: String) -> String {
        (try? FirecrackerAPITests.readAll(path)).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    @Test func logLinesHaveFirecrackersShapeAndHonourLevelAndModule() throws {
        let path = temporaryPath("log")
        defer { unlink(path) }
        let logger = EventLogger(instanceID: "vm-7")
        var settings = EventLogger.Settings()
        settings.path = path
        settings.level = .warn
        settings.showLevel = true
        settings.showOrigin = true
        settings.module = "VMM"
        try logger.configure(settings)
        logger.log(.error, "kept", module: "VMM", file: "VMM/Devices/Thing.swift", line: 42)
        logger.log(.info, "below the level", module: "VMM")
        logger.log(.error, "another module", module: "ControlAPI")
        let text = contents(path)
        let lines = text.split(separator: "\n")
        try #require(lines.count == 1, "\(text)")
        // 2026-12-06T17:03:53.123456789 [vm-7:-:ERROR:Thing.swift:42] kept
        let line = String(lines[0])
        let stamp = line.prefix(29)
        #expect(stamp.count == 29 && stamp.dropFirst(10).first == "T" && stamp.dropFirst(19).first == ".", "\(line)")
        #expect(line.dropFirst(29) == " [vm-7:\(POSIXThread.currentName ?? "-"):ERROR:Thing.swift:42] kept", "\(line)")
        #expect(throws: HostFileError.self) { try logger.configure(settings) }
        #expect(EventLogger.Level(name: "Warning") == .warn && EventLogger.Level(name: "TRACE") == .trace && EventLogger.Level(name: "loud") == nil)
    }

    @Test func metricCountersAreChangesAndGaugesAreValues() {
        var previous: [String: Int] = [:]
        let groups: MetricsReporter.Groups = ["net": ["rx_bytes_count": .counter(100)], "api_server": ["process_startup_time_us": .gauge(7)]]
        let first = MetricsReporter.render(groups, previous: &previous, timestamp: 5, id: nil, properties: [:])
        #expect(first == #"{"utc_timestamp_ms":5,"api_server":{"process_startup_time_us":7},"net":{"rx_bytes_count":100}}"#)
        let later: MetricsReporter.Groups = ["net": ["rx_bytes_count": .counter(250)], "api_server": ["process_startup_time_us": .gauge(7)]]
        let second = MetricsReporter.render(later, previous: &previous, timestamp: 6, id: "a\"b", properties: ["k": "v"])
        #expect(second == #"{"utc_timestamp_ms":6,"id":"a\"b","properties":{"k":"v"},"api_server":{"process_startup_time_us":7},"net":{"rx_bytes_count":150}}"#)
    }

    /// A FIFO with no reader: the target opens at once (read-write), and a
    /// line that finds the pipe full is counted, not waited for.
    @Test(.timeLimit(.minutes(1))) func aFullFIFOLosesLinesRatherThanBlocking() throws {
        let path = temporaryPath("fifo")
        unlink(path)
        try #require(mkfifo(path, 0o600) == 0)
        defer { unlink(path) }
        let metrics = MetricsReporter(instanceID: "fifo")
        try metrics.configure(MetricsReporter.Settings(path: path))
        let filler = String(repeating: "x", count: 4000)
        metrics.addSource { ["big": [filler: .gauge(1)]] }
        for _ in 0..<40 { metrics.flush() }  // 40 lines of 4 KB: more than a 64 KiB pipe holds
        // The reporter's own count of missed lines is on the next line it manages to write.
        let reader = open(path, O_RDONLY | O_NONBLOCK)
        defer { close(reader) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        _ = read(reader, &buffer, buffer.count)
        #expect(metrics.flush())
        let count = read(reader, &buffer, buffer.count)
        let line = String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self)
        #expect(line.contains(#""missed_metrics_count":"#) && !line.contains(#""missed_metrics_count":0"#), "\(line.suffix(200))")
    }
}
