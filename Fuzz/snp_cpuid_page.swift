// Fuzz target: the SNP CPUID page the firmware hands back (through KVM) when
// it rejects the one Kestrel sent; `kestrel run --confidential snp` reads it
// to say which leaves were corrected.
import Confidential

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSNPCPUIDPage(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // Short inputs are padded to a page so the entries themselves get explored;
    // the first byte picks whether the wrong-size refusal is exercised instead.
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if bytes.first.map({ $0 & 1 == 0 }) ?? true { bytes += [UInt8](repeating: 0, count: max(0, SNPCPUIDPage.size - bytes.count)) }
    bytes = Array(bytes.prefix(bytes.count > SNPCPUIDPage.size && size % 2 == 0 ? SNPCPUIDPage.size : bytes.count))
    guard let page = try? SNPCPUIDPage(parsing: bytes) else { return 0 }
    precondition(page.entries.count <= SNPCPUIDPage.maximumEntries)
    // A page read back is written out the same, and compares with itself.
    precondition(page.bytes.count == SNPCPUIDPage.size)
    precondition(try! SNPCPUIDPage(parsing: page.bytes) == page)
    precondition(page.differences(from: page).isEmpty)
    if let sent = try? SNPCPUIDPage(entries: Array(page.entries.dropLast())) { _ = sent.differences(from: page) }
    return 0
}
