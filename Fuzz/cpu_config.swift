// Fuzz target: Firecracker's custom CPU template JSON (PUT /cpu-config), read
// and applied to a CPUID table, so every parsed bitmap and leaf is exercised.
import KVM
import Metadata
import VMM

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCPUConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let document = try? JSONValue.parse(bytes),
          let template = try? CustomCPUTemplate.parse(document, source: "cpu-config") else { return 0 }
    let table = CPUIDTable(entries: [CPUIDEntry(function: 1, ecx: 0xFFFF_FFFF), CPUIDEntry(function: 7, flags: 1, ebx: 0xFFFF)])
    let applied = template.apply(to: table)
    precondition(applied.entries.count <= table.entries.count + template.cpuid.count, "a modifier added more than its own leaf")
    for modifier in template.msrs { _ = modifier.filter.apply(to: 0x1234_5678_9ABC_DEF0) }
    return 0
}
