// Fuzz target: the Firecracker-style JSON machine configuration, and the
// command-line device forms.
import VMM

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMachineConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let configuration = try? MachineConfigFile.parse(bytes, source: "fuzz.json") {
        _ = configuration.effectiveCommandLine
    }
    let text = String(decoding: bytes.prefix(256), as: UTF8.self)
    _ = try? DriveConfiguration.parse(text, index: 0)
    _ = try? NetworkInterfaceConfiguration.parse(text, index: 0)
    _ = try? VsockConfiguration.parse(text)
    _ = MachineConfiguration.parseSize(text)
    return 0
}
