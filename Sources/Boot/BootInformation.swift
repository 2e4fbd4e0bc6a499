/// The boot information a kernel reads at its entry, as (guest address,
/// bytes) writes: the zero page and identity page tables for the 64-bit
/// protocol, or the PVH start info, module list and memory map.
enum BootInformation {
    /// What the entry needs, given where the command line and the initrd are.
    static func writes(for entry: KernelEntry, setupHeader: [UInt8]?, commandLineLength: Int, initrd: Range<UInt64>?,
                       e820: [E820Entry], confidential: ConfidentialBootData? = nil) -> [(address: UInt64, bytes: ArraySlice<UInt8>)] {
        switch entry {
        case .longMode:
            return zeroPage(setupHeader: setupHeader, commandLineLength: commandLineLength, initrd: initrd, e820: e820,
                            confidential: confidential)
        case .pvh:
            return pvhStartInfo(initrd: initrd, e820: e820)
        }
    }

    /// The zero page (struct boot_params) and the page tables the 64-bit
    /// entry runs on.
    /// A confidential boot's setup_data chain is placed at
    /// `GuestLayout.setupDataAddress` and named in the zero page.
    static func zeroPage(setupHeader: [UInt8]?, commandLineLength: Int, initrd: Range<UInt64>?,
                         e820: [E820Entry], confidential: ConfidentialBootData? = nil) -> [(address: UInt64, bytes: ArraySlice<UInt8>)] {
        var page = ZeroPage(header: setupHeader, commandLine: (GuestLayout.commandLineAddress, commandLineLength), initrd: initrd,
                            e820: e820, rsdp: ACPITables.rsdpAddress)
        var writes: [(address: UInt64, bytes: ArraySlice<UInt8>)] = []
        if let setupData = confidential?.setupData, !setupData.isEmpty {
            page.setSetupData(GuestLayout.setupDataAddress)
            writes.append((GuestLayout.setupDataAddress, SetupData.chain(setupData, at: GuestLayout.setupDataAddress)[...]))
        }
        return [(GuestLayout.zeroPageAddress, page.bytes[...]),
                (GuestLayout.pml4Address, PageTableImage.identity4GiB(mask: confidential?.pageTableMask ?? 0)[...])] + writes
    }

    /// struct hvm_start_info, its one module (the initrd) and its memory map.
    static func pvhStartInfo(initrd: Range<UInt64>?, e820: [E820Entry]) -> [(address: UInt64, bytes: ArraySlice<UInt8>)] {
        var writes: [(address: UInt64, bytes: ArraySlice<UInt8>)] = [(GuestLayout.pvhStartInfoAddress, PVHStartInfo.startInfo(
            commandLine: GuestLayout.commandLineAddress, modules: initrd == nil ? 0 : 1,
            moduleList: GuestLayout.pvhModuleListAddress, memoryMap: GuestLayout.pvhMemoryMapAddress,
            memoryMapEntries: e820.count, rsdp: ACPITables.rsdpAddress)[...])]
        if let initrd { writes.append((GuestLayout.pvhModuleListAddress, PVHStartInfo.module(initrd)[...])) }
        writes.append((GuestLayout.pvhMemoryMapAddress, PVHStartInfo.memoryMap(e820)[...]))
        return writes
    }
}
