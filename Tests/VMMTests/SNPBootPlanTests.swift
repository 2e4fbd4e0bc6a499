import Boot
import Confidential
import Foundation
import GuestMemory
import KVM
import KestrelTesting
import Testing
@testable import VMM

/// The SNP direct boot, planned and launched without SNP hardware: the
/// layout Linux's SNP start-up code reads, the SNP_LAUNCH_UPDATE list, the
/// VMSAs, the measurement (against sev-snp-measure's GCTX), and the order
/// of the SEV calls, recorded by a stand-in for `SNPLaunch`.
@Suite(.timeLimit(.minutes(5))) struct SNPBootPlanTests {
    static let memorySize: UInt64 = 32 << 20
    static let cBit = 51

    /// A vmlinux ELF with one PT_LOAD of `code` at 16 MiB, `bss` bytes of it zero-filled.
    static func kernel(code: [UInt8] = (0..<5000).map { UInt8($0 % 251) }, bss: UInt64 = 0x3000) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 64 + 56)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        bytes.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        (bytes[4], bytes[5], bytes[6]) = (2, 1, 1)
        put(UInt16(2), at: 16); put(UInt16(62), at: 18); put(UInt64(0x100_0000), at: 24); put(UInt64(64), at: 32)
        put(UInt16(56), at: 54); put(UInt16(1), at: 56)
        put(UInt32(1), at: 64); put(UInt64(120), at: 72); put(UInt64(0x100_0000), at: 88)
        put(UInt64(code.count), at: 96); put(UInt64(code.count) + bss, at: 104)
        return bytes + code
    }

    static func cpuid() -> CPUIDTable {
        CPUIDTable(entries: [
            CPUIDEntry(function: 0, index: 0, flags: 0, eax: 0xD, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),
            CPUIDEntry(function: 1, index: 0, flags: 0, eax: 0xA1_0F11, ebx: 0, ecx: 0x8000_0000, edx: 0x178B_FBFF),
            CPUIDEntry(function: 7, index: 0, flags: CPUIDEntry.significantIndexFlag, eax: 0, ebx: 0x219C_07AB, ecx: 0, edx: 0),
            CPUIDEntry(function: 7, index: 1, flags: CPUIDEntry.significantIndexFlag, eax: 0, ebx: 0, ecx: 0, edx: 0),
            CPUIDEntry(function: 0xD, index: 1, flags: CPUIDEntry.significantIndexFlag, eax: 0xF, ebx: 0x340, ecx: 0, edx: 0),
        ])
    }

    static func plan(vcpus: Int = 2, code: [UInt8]? = nil, cBit: Int = cBit) throws -> SNPBootPlan {
        let request = LinuxBootRequest(kernel: code.map { kernel(code: $0) } ?? kernel(), commandLine: "console=ttyS0",
                                       memorySize: memorySize, preferPVH: false, vcpuCount: vcpus)
        return try SNPBootPlan(request: request, cpuid: cpuid(), encryptionBit: cBit)
    }

    static func image(_ plan: SNPBootPlan) throws -> GuestAddressSpace {
        let memory = GuestAddressSpace()
        try memory.add(try MemoryMapping(anonymousSize: Int(plan.memorySize), sharing: .private), at: GuestAddress(0))
        try plan.boot.write(into: memory)
        return memory
    }

    @Test func everyRAMPageIsLaunchedOnceInAddressOrder() throws {
        let plan = try Self.plan()
        #expect(plan.updates.first?.range.lowerBound == 0)
        #expect(plan.updates.last?.range.upperBound == Self.memorySize)
        for (first, second) in zip(plan.updates, plan.updates.dropFirst()) {
            #expect(first.range.upperBound == second.range.lowerBound, "no gap or overlap: \(first.description), \(second.description)")
            #expect(first.type != second.type, "neighbours of one type are merged")
        }
        for update in plan.updates { #expect(update.range.lowerBound % 4096 == 0 && update.range.count % 4096 == 0) }
        func type(at gpa: UInt64) -> SNPPageType? { plan.updates.first { $0.range.contains(gpa) }?.type }
        #expect(type(at: GuestLayout.confidentialSecretsPageAddress) == .secrets)
        #expect(type(at: GuestLayout.confidentialCPUIDPageAddress) == .cpuid)
        #expect(plan.updates.filter { $0.type == .secrets || $0.type == .cpuid }.allSatisfy { $0.range.count == 4096 })
        for gpa: UInt64 in [GuestLayout.setupDataAddress, GuestLayout.zeroPageAddress, GuestLayout.pml4Address, 0xE000,
                            GuestLayout.commandLineAddress, 0x100_0000, 0x100_1000, 0x100_3000] {
            #expect(type(at: gpa) == .normal, "0x\(String(gpa, radix: 16)) holds the payload")
        }
        #expect(type(at: 0x100_5000) == .zero, "past the kernel's bss")
        #expect(type(at: 0x80_0000) == .zero)
    }

    @Test func linuxFindsTheCCBlobThroughSetupData() throws {
        let plan = try Self.plan()
        let memory = try Self.image(plan)
        let setupData = try memory.load(UInt64.self, at: GuestAddress(GuestLayout.zeroPageAddress + 0x250))
        #expect(setupData == GuestLayout.setupDataAddress, "boot_params.hdr.setup_data")
        #expect(try memory.load(UInt64.self, at: GuestAddress(setupData)) == 0, "one entry")
        #expect(try memory.load(UInt32.self, at: GuestAddress(setupData + 8)) == 7, "SETUP_CC_BLOB")
        #expect(try memory.load(UInt32.self, at: GuestAddress(setupData + 12)) == 4)
        let blob = UInt64(try memory.load(UInt32.self, at: GuestAddress(setupData + 16)))
        #expect(try memory.load(UInt32.self, at: GuestAddress(blob)) == 0x4544_4D41, "CC_BLOB_SEV_HDR_MAGIC")
        #expect(try memory.load(UInt64.self, at: GuestAddress(blob + 8)) == GuestLayout.confidentialSecretsPageAddress)
        #expect(try memory.load(UInt32.self, at: GuestAddress(blob + 16)) == 4096)
        #expect(try memory.load(UInt64.self, at: GuestAddress(blob + 24)) == GuestLayout.confidentialCPUIDPageAddress)
        #expect(try memory.load(UInt32.self, at: GuestAddress(blob + 32)) == 4096)
        // The CPUID page holds the table without its all-zero sub-leaf; 0xD.1 describes legacy XSAVE.
        let page = try SNPCPUIDPage(parsing: try memory.read(at: GuestAddress(GuestLayout.confidentialCPUIDPageAddress), length: 4096))
        #expect(page == plan.cpuidPage)
        #expect(page.entries.map(\.function) == [0, 1, 7, 0xD])
        #expect(page.entries[3].index == 1 && page.entries[3].xcr0In == 1)
        // Secrets and CPUID pages and the blob page are kept from the guest's allocator.
        #expect(plan.boot.e820.contains(E820Entry(address: 0x3000, size: 0x3000, kind: .reserved)))
        #expect(plan.boot.e820.contains(E820Entry(address: 0, size: 0x3000, kind: .ram)))
        #expect(plan.boot.e820.contains(E820Entry(address: 0x6000, size: 0x9FC00 - 0x6000, kind: .ram)))
    }

    @Test func pageTablesAndCR3CarryTheCBit() throws {
        let plan = try Self.plan()
        let memory = try Self.image(plan)
        let c: UInt64 = 1 << 51
        #expect(plan.boot.pageTableRoot == GuestLayout.pml4Address | c)
        #expect(try memory.load(UInt64.self, at: GuestAddress(GuestLayout.pml4Address)) == GuestLayout.pdptAddress | 0x3 | c)
        #expect(try memory.load(UInt64.self, at: GuestAddress(GuestLayout.pdptAddress + 8)) == (GuestLayout.pageDirectoryAddress + 4096) | 0x3 | c)
        #expect(try memory.load(UInt64.self, at: GuestAddress(GuestLayout.pageDirectoryAddress + 8)) == 0x20_0000 | 0x83 | c)
        #expect(plan.vmsas[0].cr3 == plan.boot.pageTableRoot)
        #expect(throws: ConfigurationError.self) { try Self.plan(cBit: 12) }
    }

    @Test func theVMSAsAreTheBootVCPUAndAPsInResetState() throws {
        let plan = try Self.plan(vcpus: 3)
        #expect(plan.vmsas.count == 3)
        let bsp = plan.vmsas[0]
        #expect(bsp.rip == 0x100_0000 && bsp.rsi == GuestLayout.zeroPageAddress)
        #expect(bsp.efer == 0x1500 && bsp.cr0 == 0x8000_0011 && bsp.cr4 == 0x60 && bsp.sevFeatures == 0x1)
        #expect(bsp.cs.attributes == 0xA9B && bsp.ds.attributes == 0xC93 && bsp.gdtr.base == GuestLayout.gdtAddress)
        for ap in plan.vmsas.dropFirst() {
            #expect(ap == SNPVMSA.resetState(eip: 0xFFFF_FFF0, sevFeatures: 0x1, signature: 0xA1_0F11))
        }
    }

    /// The whole chain, with the plan's own pages, against sev-snp-measure.
    @Test func theMeasurementMatchesSevSnpMeasure() throws {
        let plan = try Self.plan()
        let memory = try Self.image(plan)
        let digest = try plan.measurement(image: memory)
        let directory = NSTemporaryDirectory() + "kestrel-snp-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var calls: [String] = []
        for (index, update) in plan.updates.enumerated() {
            let (gpa, length) = (update.range.lowerBound, UInt64(update.range.count))
            switch update.type {
            case .normal:
                let path = "\(directory)/\(index)"
                try Data(try memory.read(at: GuestAddress(gpa), length: Int(length))).write(to: URL(fileURLWithPath: path))
                calls.append("g.update_normal_pages(\(gpa), open('\(path)','rb').read())")
            case .zero: calls.append("g.update_zero_pages(\(gpa), \(length))")
            case .cpuid: calls.append("g.update_cpuid_page(\(gpa))")
            case .secrets: calls.append("g.update_secrets_page(\(gpa))")
            case .unmeasured: calls.append("g.update_unmeasured_pages(\(gpa), \(length))")
            }
        }
        for (index, vmsa) in plan.vmsas.enumerated() {
            let path = "\(directory)/vmsa\(index)"
            try Data(vmsa.bytes).write(to: URL(fileURLWithPath: path))
            calls.append("g.update_vmsa_page(open('\(path)','rb').read())")
        }
        let script = (["from sevsnpmeasure.gctx import GCTX", "g = GCTX()"] + calls + ["print(g.hex_ld())"]).joined(separator: "\n")
        #expect(digest.hex == (try #require(sevSnpMeasure(script), "python3 with sev-snp-measure (scripts/prepare-host test) is needed")))
        // Any payload byte, and the vCPU count, change it.
        var code = (0..<5000).map { UInt8($0 % 251) }
        code[4321] ^= 1
        let changed = try Self.plan(code: code)
        #expect(try changed.measurement(image: try Self.image(changed)) != digest)
        let oneVCPU = try Self.plan(vcpus: 1)
        #expect(try oneVCPU.measurement(image: try Self.image(oneVCPU)) != digest)
    }

    @Test func aConfidentialBootRefusesWhatItCannotDo() throws {
        var request = LinuxBootRequest(kernel: Self.kernel(), memorySize: 4 << 30, preferPVH: false)
        #expect(throws: ConfigurationError.self) { try SNPBootPlan(request: request, cpuid: Self.cpuid(), encryptionBit: 51) }
        request.memorySize = Self.memorySize
        #expect(throws: ConfigurationError.self) {
            try SNPBootPlan(request: request, cpuid: Self.cpuid(), encryptionBit: 51, policy: SNPGuestPolicy(rawValue: 0))
        }
        let tooMany = CPUIDTable(entries: (0..<65).map { CPUIDEntry(function: 0x4000_0000 + UInt32($0), index: 0, flags: 0, eax: 1, ebx: 0, ecx: 0, edx: 0) })
        #expect(throws: SNPLaunchError.self) { try SNPBootPlan(request: request, cpuid: tooMany, encryptionBit: 51) }
    }

    /// `kestrel run --confidential snp --dry-run` on this host: the plan from
    /// the configuration and KVM's CPUID, its measurement, and the host's
    /// missing pieces, with nothing started.
    @Test(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm for the CPUID table"))
    func theDryRunPrintsThePlanTheMeasurementAndTheHostsVerdict() throws {
        let path = NSTemporaryDirectory() + "kestrel-snp-kernel-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(Self.kernel()).write(to: URL(fileURLWithPath: path))
        var configuration = MachineConfiguration(kernelPath: path, vcpuCount: 2, memorySize: Self.memorySize)
        configuration.confidential = .snp
        let text = try MachineBuilder(configuration: configuration).snpDryRun()
        #expect(text.contains("SETUP_CC_BLOB at 0x5000"), "\(text)")
        #expect(text.contains("0x4000-0x4fff CPUID (1 page)") && text.contains("0x3000-0x3fff SECRETS (1 page)"))
        #expect(text.contains("measures 2 VMSA pages"))
        let line = try #require(text.split(separator: "\n").first { $0.contains("expected measurement ") })
        #expect(line.split(separator: " ").last?.count == 96, "a SHA-384 in hex: \(line)")
        #expect(try MachineBuilder(configuration: configuration).snpDryRun() == text, "the same inputs give the same plan and measurement")
        let missing = try SNPHostSupport(kvm: try KVMSystem()).missingForLaunch
        #expect(text.contains(missing.isEmpty ? "this host offers SEV-SNP" : "this host cannot launch it: " + missing.joined(separator: "; ")))
    }

    // MARK: The launch sequence, recorded

    final class RecordingLaunch: SNPLaunchOperations {
        var calls: [String] = []
        var failCPUIDWith: SEVCommandError?
        var corrected: [UInt8]?

        func setPrivate(_ range: Range<UInt64>) throws { calls.append("private 0x\(String(range.lowerBound, radix: 16))-0x\(String(range.upperBound, radix: 16))") }
        func start(policy: SNPGuestPolicy) throws { calls.append("start 0x\(String(policy.rawValue, radix: 16))") }
        func update(guestPhysicalAddress: UInt64, length: UInt64, type: SNPPageType) throws {
            if type == .cpuid, let failCPUIDWith { throw failCPUIDWith }
            calls.append("update 0x\(String(guestPhysicalAddress, radix: 16)) \(length / 4096) \(type.name)")
        }
        func finish(hostData: [UInt8]) throws { calls.append("finish") }
        func sourceContents(at guestPhysicalAddress: UInt64, length: Int) -> [UInt8] { corrected ?? [] }
    }

    @Test func theSEVCallsComeInTheFirmwaresOrder() throws {
        let plan = try Self.plan()
        let launch = RecordingLaunch()
        var announced: [String] = []
        try SNPLaunchSequence.run(plan, measurement: try plan.measurement(image: try Self.image(plan)), on: launch,
                                  createVCPUs: { launch.calls.append("vcpus") }, announce: {
                                      announced.append($0)
                                      launch.calls.append("announce")
                                  })
        #expect(launch.calls.first == "private 0x0-0x2000000")
        #expect(launch.calls[1] == "start 0x30000")
        let updates = launch.calls.filter { $0.hasPrefix("update") }
        #expect(updates.count == plan.updates.count)
        #expect(updates.first == "update 0x0 1 NORMAL" && updates.contains("update 0x4000 1 CPUID") && updates.contains("update 0x3000 1 SECRETS"))
        #expect(Array(launch.calls.suffix(3)) == ["vcpus", "announce", "finish"], "the measurement is printed before SNP_LAUNCH_FINISH")
        #expect(announced.first?.contains(try plan.measurement(image: try Self.image(plan)).hex) == true)
    }

    @Test func aRejectedCPUIDPageIsExplainedFromTheFirmwaresCorrection() throws {
        let plan = try Self.plan()
        let launch = RecordingLaunch()
        launch.failCPUIDWith = SEVCommandError(command: .snpLaunchUpdate, errno: .ioError, firmwareError: 0x16)
        var corrected = plan.cpuidPage
        corrected.entries[2].ebx = 0x0119_C07A
        launch.corrected = corrected.bytes
        do {
            try SNPLaunchSequence.run(plan, measurement: SNPLaunchDigest(), on: launch, createVCPUs: { Issue.record("vCPUs after a failed update") },
                                      announce: { _ in Issue.record("announced after a failed update") })
            Issue.record("a rejected CPUID page did not stop the launch")
        } catch let failure as SNPLaunchSequence.Failure {
            #expect(failure.step.contains("CPUID"))
            #expect(failure.reason.contains("0x7.0: ebx 0x219c07ab → 0x119c07a"), "\(failure.reason)")
        }
        #expect(!launch.calls.contains("finish"))
        launch.corrected = [1, 2, 3]
        #expect(throws: SNPLaunchSequence.Failure.self) {
            try SNPLaunchSequence.run(plan, measurement: SNPLaunchDigest(), on: launch, createVCPUs: {}, announce: { _ in })
        }
    }

    @Test func corruptCPUIDPagesAreRefusedNotTrusted() {
        #expect(throws: SNPLaunchError.self) { try SNPCPUIDPage(parsing: [UInt8](repeating: 0, count: 4095)) }
        var page = [UInt8](repeating: 0, count: 4096)
        page[0] = 65
        #expect(throws: SNPLaunchError.self) { try SNPCPUIDPage(parsing: page) }
        page[0] = 64
        #expect((try? SNPCPUIDPage(parsing: page))?.entries.count == 64, "64 entries fill the page exactly")
    }
}
