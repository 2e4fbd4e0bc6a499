import Confidential
import Foundation
import GuestMemory
import KVM
import Testing
@testable import VMM

/// `--confidential snp`, `--snp-certs` and `--memory-backend guest_memfd` as
/// the builder sees them: refusals name what is missing before any VM exists.
@Suite(.timeLimit(.minutes(5))) struct ConfidentialConfigurationTests {
    static var kvm: Bool { KVMSystem.isAvailable() }

    /// This host (and the lab's TCG hosts) have no SEV-SNP: the refusal names
    /// the missing VM type and /dev/sev, and comes before the kernel is read.
    @Test(.enabled(if: kvm, "needs /dev/kvm")) func snpIsRefusedNamingWhatIsMissing() throws {
        var configuration = MachineConfiguration(kernelPath: "/proc/self/exe")
        configuration.confidential = .snp
        let support = try Confidential.SNPHostSupport(kvm: try KVMSystem())
        try #require(!support.missingForLaunch.isEmpty, "an SNP host: this test covers hosts without SNP")
        do {
            _ = try MachineBuilder(configuration: configuration).build { _ in }
            Issue.record("an SNP machine was built on a host without SNP")
        } catch let error as ConfigurationError {
            #expect(error.description.hasPrefix("--confidential snp: SEV-SNP is not available on this host: "), "\(error)")
            for missing in support.missingForLaunch { #expect(error.description.contains(missing)) }
            #expect(!error.description.contains("not a bzImage"), "refused before the kernel is looked at: \(error)")
        }
    }

    @Test func snpCertificatesAreCheckedAndNeedSNP() throws {
        let blob = NSTemporaryDirectory() + "kestrel-certs-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: blob) }
        #expect(FileManager.default.createFile(atPath: blob, contents: Data([1, 2, 3])))
        var configuration = MachineConfiguration(kernelPath: "/proc/self/exe")
        configuration.snpCertificatesPath = blob
        #expect(throws: ConfigurationError("--snp-certs is for --confidential snp")) { try configuration.validate() }
        configuration.confidential = .snp
        do {
            try configuration.validate()
            Issue.record("three bytes were taken for a certificate table")
        } catch let error as ConfigurationError {
            #expect(error.description.hasPrefix("\(blob) is not an SNP certificate table"), "\(error)")
        }
        configuration.snpCertificatesPath = blob + "-missing"
        #expect(throws: ConfigurationError("cannot read the SNP certificate blob \(blob)-missing")) { try configuration.validate() }
    }

    /// guest_memfd RAM where the host offers MMAP|INIT_SHARED (this host does):
    /// every RAM region has a guest_memfd and the address space maps it.
    @Test(.enabled(if: kvm, "needs /dev/kvm")) func guestMemfdBackingPutsEveryRegionInAGuestMemfd() throws {
        let kvm = try KVMSystem()
        let vm = try kvm.createVirtualMachine()
        let flags: GuestMemfdFlags
        do { flags = try vm.guestMemfdFlagsForRAM() } catch {
            // A host without MMAP|INIT_SHARED: the builder's refusal names it.
            #expect(throws: ConfigurationError.self) { _ = try MachineBuilder.ramBacking(.guestMemfd, vm: vm) }
            return
        }
        let (backing, protection) = try MachineBuilder.ramBacking(.guestMemfd, vm: vm)
        #expect(backing == .guestMemfd(flags))
        #expect(protection.hasPrefix("guest_memfd MMAP|INIT_SHARED"), "\(protection)")
        #expect(protection.contains(flags.contains(.noDirectMap) ? "removed from the host's direct map" : "still in the host's direct map"))
        let memory = GuestMemory.GuestAddressSpace()
        let region = try vm.addMemory(slot: 0, at: 0, size: 4 << 20, alignment: 2 << 20, backing: backing, to: memory)
        #expect(region.guestMemfd != nil && region.mapping?.sharing == .shared)
        #expect(region.memorySlot.userspaceAddress == region.mapping?.address, "userspace_addr is the guest_memfd's mapping")
        try memory.store(UInt64(0x1234), at: 0x1000)
        let second = try GuestMemory.MemoryMapping(fileDescriptor: region.guestMemfd!.fileDescriptor, size: 4096, offset: 0x1000)
        #expect(second.baseAddress.load(as: UInt64.self) == 0x1234, "a write through the address space lands in the guest_memfd")
        #expect(throws: KVMUsageError.self) { try vm.addMemory(slot: 1, at: GuestAddress(1 << 30), size: 4096, backing: .guestMemfd([.mmap]), to: memory) }
    }
}
