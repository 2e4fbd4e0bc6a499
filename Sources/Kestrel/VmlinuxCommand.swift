import ArgumentParser
import Boot
import Decompression
import FoundationEssentials
import Glibc

/// `kestrel vmlinux`: the ELF kernel inside a bzImage.
struct VmlinuxCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmlinux",
        abstract: "Extract the vmlinux ELF from a bzImage (gzip, LZ4, zstd or xz payload), e.g. to boot it through PVH.")

    @Argument(help: "The bzImage, e.g. /boot/vmlinuz-*.") var bzImage: String
    @Option(name: [.short, .customLong("output")], help: "Where to write the vmlinux.") var output: String
    @Flag(help: "Replace the output file if it exists.") var force = false

    func run() throws {
        guard let data = FileManager.default.contents(atPath: bzImage) else { throw CommandFailure("cannot read \(bzImage)") }
        let image = try BzImage([UInt8](data))
        let compression = PayloadCompression.detect(image.payload)
        let start = ContinuousClock.now
        let vmlinux = try compression.decompress(image.payload, expectedSize: Int(image.header.initSize))
        let elapsed = ContinuousClock.now - start
        let elf = try ELFKernel(vmlinux)
        try writeNewFile(vmlinux, to: output, replacing: force)
        print("wrote \(output): \(vmlinux.count) bytes from a \(compression.rawValue) payload in \(elapsed); "
              + "\(elf.segments.count) PT_LOAD segments, " + (elf.pvhEntry.map { "PVH entry 0x\(String($0, radix: 16))" } ?? "no PVH entry"))
    }
}
