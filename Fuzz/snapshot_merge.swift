// Fuzz target: the checked diff merge (`kestrel snapshot merge
// STATE:MEMORY...`), which reads the state files and memory files a user
// names. Each input makes, in /dev/shm, a base of 16 pages and a diff:
// - byte 0 bit 7 clear: the diff's data pages are the bits of bytes 1-2,
//   filled from the input; byte 0 bits 0-2 tamper with the diff's state
//   (another parent, another byte count, another digest) or its memory (a
//   hole filled, the file cut short);
// - bit 7 set: the rest of the input is the diff's state file's section
//   list, framed with the magic, version and CRC (as snapshot_state does).
// The merge must refuse or succeed, never crash; when it succeeds the
// untampered chain must be what it read, and the output the base with the
// diff's data pages over it.
import Glibc
import KVM
import Virtio
import VMM
import X86

private let page = 4096
private let pages = 16
private let directory = "/dev/shm/kestrel-fuzz-merge-\(getpid())"

private func state(memoryPages: Int, lineage: SnapshotLineage) -> MachineSnapshot {
    let cpuid = [CPUIDEntry(function: 0, eax: 1)]
    let vcpu = VCPUSnapshot(registers: Registers(), specialRegisters: SpecialRegisters(), fpu: FPUState(), extendedControlRegisters: nil,
                            events: VCPUEvents(), mpState: .runnable, msrs: [], guestSSP: nil, features: CPUFeatureSet(table: CPUIDTable(entries: cpuid)),
                            xsave: nil, localAPIC: nil, debugRegisters: nil)
    return MachineSnapshot(kestrelVersion: "fuzz", configuration: "{}", memory: [.init(guestAddress: 0, size: UInt64(memoryPages * page), fileOffset: 0)],
                           vcpus: [.init(cpuid: cpuid, state: vcpu)],
                           interruptControllers: InterruptControllerState.Chip.allCases.map { InterruptControllerState(chip: $0) },
                           pit: PITState(), clock: ClockState(nanoseconds: 1), serial: Serial16550.SavedState(), devices: [], lineage: lineage)
}

private func write(_ bytes: [UInt8], to path: String, at offset: Int = 0, truncate: Bool = true) {
    let fd = open(path, O_WRONLY | O_CREAT | (truncate ? O_TRUNC : 0), 0o600)
    precondition(fd >= 0, "cannot write \(path)")
    precondition(bytes.isEmpty || pwrite(fd, bytes, bytes.count, off_t(offset)) == bytes.count)
    close(fd)
}

private func sized(_ path: String, _ size: Int) {
    precondition(truncate(path, off_t(size)) == 0)
}

private func contents(_ path: String) -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return [] }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: Int(lseek(fd, 0, SEEK_END)))
    _ = pread(fd, &bytes, bytes.count, 0)
    return bytes
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSnapshotMerge(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard input.count >= 3 else { return 0 }
    mkdir(directory, 0o700)
    let files = ["base.state", "base.mem", "diff.state", "diff.mem", "out.mem"].map { directory + "/" + $0 }
    defer { for file in files { unlink(file) } }
    // The base: pages 0, 5 and 15 hold data.
    let baseID = SnapshotLineage.newID()
    write(state(memoryPages: pages, lineage: SnapshotLineage(kind: .full, id: baseID)).encoded(), to: files[0])
    write([], to: files[1])
    for index in [0, 5, 15] { write([UInt8](repeating: UInt8(index + 1), count: page), to: files[1], at: index * page, truncate: false) }
    sized(files[1], pages * page)
    var expected = contents(files[1])

    var untampered = false
    if input[0] & 0x80 != 0 {
        var framed = MachineSnapshot.magic
        withUnsafeBytes(of: MachineSnapshot.formatVersion.littleEndian) { framed += $0 }
        framed += input.dropFirst()
        withUnsafeBytes(of: CRC32.checksum(framed[...]).littleEndian) { framed += $0 }
        write(framed, to: files[2])
        write([], to: files[3])
        sized(files[3], pages * page)
    } else {
        let selected = UInt16(input[1]) | UInt16(input[2]) << 8
        write([], to: files[3])
        var fill = input.count > 3 ? Array(input[3...]) : [0]
        for index in 0..<pages where selected & (1 << index) != 0 {
            let bytes = (0..<page).map { fill[($0 + index) % fill.count] }
            write(bytes, to: files[3], at: index * page, truncate: false)
            expected.replaceSubrange((index * page)..<((index + 1) * page), with: bytes)
            fill = fill.reversed()
        }
        sized(files[3], pages * page)
        guard let digest = try? SnapshotLineage.dataDigest(ofFile: files[3]) else { return 0 }
        var lineage = SnapshotLineage(kind: .diff, id: SnapshotLineage.newID(), parent: baseID, dataBytes: digest.bytes, dataDigest: digest.digest)
        let tamper = input[0] & 0x07
        switch tamper {
        case 1: lineage.parent = SnapshotLineage.newID()
        case 2: lineage.dataBytes &+= 4096
        case 3: lineage.dataDigest ^= 1
        case 4: sized(files[3], pages * page - page)  // cut short
        case 5: write([UInt8](repeating: 0, count: page), to: files[3], at: (pages - 1) * page, truncate: false)  // a hole filled, if it was one
        default: break
        }
        untampered = tamper == 0 || tamper > 5
        write(state(memoryPages: pages, lineage: lineage).encoded(), to: files[2])
    }
    let raw = input[0] & 0x80 != 0
    // Zeros over page 15 change nothing when it was data of zeros already.
    let undetermined = raw || (input[0] & 0x07 == 5 && (UInt16(input[1]) | UInt16(input[2]) << 8) & (1 << 15) != 0)
    do {
        _ = try SnapshotMemoryMerge.merge(base: .init(state: files[0], memory: files[1]), diffs: [.init(state: files[2], memory: files[3])],
                                          output: files[4])
        precondition(untampered || undetermined, "a tampered diff was merged (case \(input[0] & 0x07))")
        if untampered { precondition(contents(files[4]) == expected, "the merge is not the base with the diff's pages over it") }
    } catch {
        precondition(!untampered, "an untampered diff was refused: \(error)")
    }
    return 0
}
