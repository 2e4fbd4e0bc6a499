#if canImport(Glibc)
import Glibc
#endif
import HostSystem
import Synchronization

/// Kestrel's log, configured as Firecracker's logger is (docs/logger.md):
/// by `--log-path`, `--level`, `--show-level` and `--show-log-origin`, or by
/// `PUT /logger` before the machine starts. Until then lines go to standard
/// error as "kestrel: message", as they always have. Once configured, each
/// line goes to the file or named pipe in Firecracker's form,
///
///     2026-12-06T17:03:53.123456789 [anonymous-instance:main:WARN:MachineRunner.swift:42] message
///
/// (the level and origin only when asked for), one write(2) per line, and
/// lines below the level are left out. The target is opened read-write and
/// non-blocking, like Firecracker's: a FIFO needs no reader yet, and a line
/// that would block is counted as missed rather than waited for.
public final class EventLogger: Sendable {
    public enum Level: Int, Comparable, Sendable, CaseIterable {
        case off = 0, error, warn, info, debug, trace

        /// Firecracker's names, any case; "Warning" is Warn.
        public init?(name: String) {
            switch name.lowercased() {
            case "off": self = .off
            case "error": self = .error
            case "warn", "warning": self = .warn
            case "info": self = .info
            case "debug": self = .debug
            case "trace": self = .trace
            default: return nil
            }
        }

        public static func < (lhs: Level, rhs: Level) -> Bool { lhs.rawValue < rhs.rawValue }

        /// The name the `log` crate prints, as Firecracker's lines show it.
        var tag: String { ["OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"][rawValue] }
    }

    public struct Settings: Equatable, Sendable {
        public var path: String?
        public var level: Level = .info
        public var showLevel = false
        public var showOrigin = false
        /// Only lines from this module (Kestrel's target names, e.g. "VMM") when given.
        public var module: String?
        public init() {}
    }

    /// Lines that could not be written, and writes that failed (Firecracker's `logger` metrics).
    public struct Counts: Equatable, Sendable {
        public var missedLines = 0, failedWrites = 0
    }

    private struct State {
        var settings = Settings()
        var fd: Int32 = -1
        var counts = Counts()
        var configured = false
    }

    public let instanceID: String
    private let state = Mutex(State())

    public init(instanceID: String) {
        self.instanceID = instanceID
    }

    deinit {
        state.withLock { if $0.fd >= 0 { close($0.fd) } }
    }

    /// Whether a path has been given (the log then goes there, not to stderr).
    public var isConfigured: Bool { state.withLock { $0.fd >= 0 } }
    public var settings: Settings { state.withLock { $0.settings } }
    public var counts: Counts { state.withLock { $0.counts } }

    /// Applies `settings`, once (as Firecracker's logger: a second
    /// configuration is refused). The path is opened first, so that one that
    /// cannot be opened changes nothing.
    public func configure(_ settings: Settings) throws {
        guard !state.withLock({ $0.configured }) else {
            throw HostFileError("the logger is already configured; it cannot be configured again")
        }
        _ = Self.timestamp()  // reads the time zone now, not later under a thread's seccomp list
        var fd: Int32 = -1
        if let path = settings.path {
            fd = try HostFile.open(path, O_RDWR | O_CREAT | O_APPEND, mode: 0o600, allowed: [.regular, .fifo, .characterDevice], what: "the log file",
                                   keepNonBlocking: true)
        }
        let kept = state.withLock { state -> Bool in
            guard !state.configured else { return false }
            state.configured = true
            state.fd = fd
            state.settings = settings
            return true
        }
        if !kept {
            if fd >= 0 { close(fd) }
            throw HostFileError("the logger is already configured; it cannot be configured again")
        }
    }

    /// Logs `message` at `level`. `module` and `file`/`line` are its origin.
    public func log(_ level: Level, _ message: String, module: String = "Kestrel", file: String = #fileID, line: Int = #line) {
        state.withLock { state in
            guard state.fd >= 0 else {
                // Not configured: standard error, as Kestrel always wrote.
                if level != .off { Self.write(Array("kestrel: \(message)\n".utf8), to: 2) }
                return
            }
            guard level != .off, level <= state.settings.level else { return }
            if let wanted = state.settings.module, !module.hasPrefix(wanted) { return }
            var head = "\(Self.timestamp()) [\(instanceID):\(POSIXThread.currentName ?? "-")"
            if state.settings.showLevel { head += ":\(level.tag)" }
            if state.settings.showOrigin { head += ":\(file.split(separator: "/").last.map(String.init) ?? file):\(line)" }
            let bytes = Array((head + "] " + message + "\n").utf8)
            if !Self.write(bytes, to: state.fd) {
                state.counts.missedLines += 1
                state.counts.failedWrites += 1
            }
        }
    }

    /// One write(2) of the whole line (retried on EINTR); false when it
    /// failed or came short.
    @discardableResult
    static func write(_ bytes: [UInt8], to fd: Int32) -> Bool {
        while true {
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            return written == bytes.count
        }
    }

    /// Local time as Firecracker's `LocalTime` prints it: YYYY-MM-DDTHH:MM:SS.nnnnnnnnn.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        localtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        let nanoseconds = String(now.tv_nsec)
        return "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + String(repeating: "0", count: 9 - nanoseconds.count) + nanoseconds
    }
}
