import KVM

/// The topology a guest reads from CPUID: `count` vCPUs in one package, one
/// or (with SMT) two threads to a core, vCPU `index` being thread
/// `index % threadsPerCore` of core `index / threadsPerCore`. The leaves
/// follow the Intel SDM (1, 4, 0xB) and AMD's APM (0x8000_0008, 0x8000_001D,
/// 0x8000_001E), with the values Firecracker gives for `smt`, so a guest
/// moved between the two sees the same machine.
public struct CPUTopology: Sendable, Equatable {
    public let count: Int
    /// 2 with SMT and more than one vCPU, else 1.
    public let threadsPerCore: Int

    /// `smt` asks for two threads to a core; it needs `count` to be 1 or even
    /// (`MachineConfiguration.validate()` checks).
    public init(count: Int, smt: Bool) {
        self.count = max(count, 1)
        threadsPerCore = smt && count > 1 ? 2 : 1
    }

    /// The bits of an x2APIC id below the core: 1 with SMT, else 0.
    var threadBits: UInt32 { threadsPerCore == 2 ? 1 : 0 }
    /// The bits below the package: enough for the largest vCPU count (64).
    static let packageBits: UInt32 = 6

    /// `table` with vCPU `index`'s APIC ids and this topology written into the
    /// leaves present (0xB sub-leaf 1 is added: KVM stopped returning it in 6.2).
    public func apply(to table: CPUIDTable, vcpu index: Int) -> CPUIDTable {
        var table = table
        let id = UInt32(index), cores = UInt32(count / threadsPerCore)
        if var leaf1 = table.entry(function: 1) {
            leaf1.ecx |= 1 << 31                                                        // running under a hypervisor
            leaf1.ebx = (leaf1.ebx & 0x00FF_FFFF) | id << 24                            // initial APIC id
            leaf1.ebx = (leaf1.ebx & 0xFF00_FFFF) | UInt32(min(count, 128).nextPowerOfTwo) << 16  // addressable ids in the package
            if count > 1 { leaf1.edx |= 1 << 28 } else { leaf1.edx &= ~(1 << 28) }    // HTT: EBX[23:16] is valid
            table.set(leaf1)
        }
        // Leaf 4 (Intel) and 0x8000_001D (AMD): who shares each cache, and (Intel) cores in the package.
        for leaf in [UInt32(4), 0x8000_001D] {
            for subleaf in UInt32(0)..<16 {
                guard var entry = table.entry(function: leaf, index: subleaf), entry.eax & 0x1F != 0 else { break }
                let level = (entry.eax >> 5) & 7
                let sharing = level == 3 ? UInt32(count) : UInt32(threadsPerCore)
                entry.eax = (entry.eax & ~(0xFFF << 14)) | (sharing - 1) << 14
                if leaf == 4 { entry.eax = (entry.eax & 0x03FF_FFFF) | (cores - 1) << 26 }
                table.set(entry)
            }
        }
        // Leaf 0xB (and 0x1F where KVM offers it): the thread domain, then the
        // core domain (sub-leaf 1 is added to each: KVM stopped returning it in 6.2).
        for leaf in [UInt32(0xB), 0x1F] where table.entry(function: leaf) != nil && !table.entries.contains(where: { $0.function == leaf && $0.index == 1 }) {
            table.set(CPUIDEntry(function: leaf, index: 1, flags: CPUIDEntry.significantIndexFlag))
        }
        for leaf in [UInt32(0xB), 0x1F] {
            for subleaf in UInt32(0)..<4 {
                guard var entry = table.entry(function: leaf, index: subleaf) else { continue }
                entry.flags |= CPUIDEntry.significantIndexFlag
                entry.edx = id                                                          // x2APIC id
                switch subleaf {
                case 0: (entry.eax, entry.ebx, entry.ecx) = (threadBits, UInt32(threadsPerCore), 1 << 8)
                case 1: (entry.eax, entry.ebx, entry.ecx) = (Self.packageBits, UInt32(count), 2 << 8 | 1)
                default: (entry.eax, entry.ebx, entry.ecx) = (0, 0, subleaf)           // no further domain
                }
                table.set(entry)
            }
        }
        // AMD: Linux reads 0x8000_001E and leaf 0xB only with TOPOEXT, which
        // Firecracker sets too. Where the extended range stops short of
        // 0x8000_001E (an emulated CPU's, say), it is raised to reach it: the
        // leaves between read as zeros, as an AMD CPU's absent leaves do.
        if Self.isAMD(table), var range = table.entry(function: 0x8000_0000), range.eax >= 0x8000_0008,
           var features = table.entry(function: 0x8000_0001) {
            if range.eax < 0x8000_001E {
                range.eax = 0x8000_001E
                table.set(range)
            }
            features.ecx |= 1 << 22
            table.set(features)
            if table.entry(function: 0x8000_001E) == nil { table.set(CPUIDEntry(function: 0x8000_001E)) }
        }
        // AMD: threads in the package, and this thread's core and threads per core
        // (on Intel, 0x8000_0008 ECX is reserved and left as KVM gives it).
        if Self.isAMD(table), var entry = table.entry(function: 0x8000_0008) {
            entry.ecx = (entry.ecx & ~0xF0FF) | 7 << 12 | UInt32(count - 1)
            table.set(entry)
        }
        if Self.isAMD(table), var entry = table.entry(function: 0x8000_001E) {
            entry.eax = id
            entry.ebx = (entry.ebx & ~0xFFFF) | UInt32(threadsPerCore - 1) << 8 | id / UInt32(threadsPerCore)
            entry.ecx &= ~0x7FF                                                         // node 0, one node per processor
            table.set(entry)
        }
        return table
    }
}

extension CPUTopology {
    /// Whether leaf 0 names AuthenticAMD (or Hygon, which shares its topology leaves).
    static func isAMD(_ table: CPUIDTable) -> Bool {
        guard let leaf0 = table.entry(function: 0) else { return false }
        return (leaf0.ebx, leaf0.edx, leaf0.ecx) == (0x6874_7541, 0x6974_6E65, 0x444D_4163)      // "Auth" "enti" "cAMD"
            || (leaf0.ebx, leaf0.edx, leaf0.ecx) == (0x6F67_7948, 0x6E65_476E, 0x656E_6975)   // "Hygo" "nGen" "uine"
    }
}

extension Int {
    /// The least power of two at or above this (at least 1).
    var nextPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}
