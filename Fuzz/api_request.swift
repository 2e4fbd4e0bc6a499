// Fuzz target: the API's HTTP/1.1 reader and Firecracker routes. The input
// is fed in pieces whose sizes come from its first byte, every request read
// is answered by a FirecrackerAPI whose machine never starts, and each
// response must serialize.
import ControlAPI
import VMM

struct RefusingControl: MicroVMControl {
    func start(_ configuration: MachineConfiguration) throws { throw ConfigurationError("fuzz: no machine") }
    func pause() throws {}
    func resume() throws {}
    func sendCtrlAltDel() throws {}
    func createSnapshot(statePath: String, memoryPath: String, type: SnapshotType) throws { throw ConfigurationError("fuzz: no machine") }
    func loadSnapshot(statePath: String, memoryPath: String, resume: Bool, options: SnapshotLoadOptions) throws -> MachineConfiguration {
        throw ConfigurationError("fuzz: no snapshot")
    }
}

// The log and metrics are configured once, here, so that no input can make
// the API create files elsewhere (a second configuration is refused).
let api: FirecrackerAPI = {
    let api = FirecrackerAPI(instanceID: "fuzz", version: "0.0.0", control: RefusingControl())
    var log = EventLogger.Settings()
    log.path = "/dev/null"
    log.level = .off
    try! api.logger.configure(log)
    try! api.metrics.configure(MetricsReporter.Settings(path: "/dev/null"))
    return api
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAPIRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let piece = Int(bytes[0] % 64) + 1
    var reader = HTTPRequestReader()
    var rest = bytes.dropFirst()
    reading: while !rest.isEmpty {
        reader.append(rest.prefix(piece))
        rest = rest.dropFirst(piece)
        do {
            while let event = try reader.next() {
                if case .request(let request) = event {
                    let response = api.respond(to: request)
                    precondition((200..<600).contains(response.status))
                    _ = response.serialized(closing: !request.keepsConnection)
                }
            }
        } catch {
            precondition((400..<600).contains(error.status))
            break reading
        }
        precondition(reader.bufferedCount <= HTTPRequestReader.maximumHeadBytes + reader.maximumBodyBytes + 64)
    }
    return 0
}
