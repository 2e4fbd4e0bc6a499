import Confidential
import KVM
import Testing

@Suite(.timeLimit(.minutes(5))) struct LaunchTests {
    @Test func commandNumbersMatchTheUAPI() {
        #expect(SEVCommand.initialize2.rawValue == 22)
        #expect(SEVCommand.snpLaunchStart.rawValue == 100)
        #expect(SEVCommand.snpLaunchUpdate.rawValue == 101)
        #expect(SEVCommand.snpLaunchFinish.rawValue == 102)
        #expect(SEVCommand.snpEnableRequestCertificates.rawValue == 103)
        #expect(KVMRequest.memoryEncryptOperation.number == 0xC008_AEBA)
        #expect(SNPPageType.allCases.map(\.rawValue) == [1, 3, 4, 5, 6])
        #expect(SNPGuestPolicy.standard.rawValue == 0x30000)
    }

    @Test func firmwareErrorIsReported() {
        let error = SEVCommandError(command: .snpLaunchStart, errno: .ioError, firmwareError: 0x27)
        #expect(error.description == "KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_START) failed: EIO (Input/output error), firmware status 0x27")
    }

    /// On a host without SNP the launch stops before any SEV call, naming what is missing.
    @Test func launchSaysWhatIsMissing() throws {
        guard let kvm = try? KVMSystem() else {
            Issue.record("/dev/kvm is required for this test on our machines")
            return
        }
        let support = try SNPHostSupport(kvm: kvm)
        if support.missingForLaunch.isEmpty {
            // An SNP host: the launch must get past the host checks.
            _ = try SNPLaunch(kvm: kvm, memorySize: 1 << 20)
            return
        }
        do {
            _ = try SNPLaunch(kvm: kvm, memorySize: 1 << 20)
            Issue.record("SNPLaunch succeeded on a host that lacks: \(support.missingForLaunch)")
        } catch let error as SNPLaunchError {
            guard case .unavailable(let missing) = error else { Issue.record("\(error)"); return }
            #expect(missing == support.missingForLaunch)
            #expect(error.description.hasPrefix("SEV-SNP is not available on this host: "))
            if !support.snpVMType { #expect(error.description.contains("KVM_X86_SNP_VM (4)")) }
            if case .failure = support.sevDevice { #expect(error.description.contains("/dev/sev")) }
        }
        #expect(throws: SNPLaunchError.self) { try SNPLaunch(kvm: kvm, memorySize: 1000) }
    }
}

@Suite(.timeLimit(.minutes(5))) struct SEVCommandTests {
    /// The ioctl path itself: on a VM without SEV, KVM refuses every command, and
    /// the error names the command and errno rather than succeeding silently.
    @Test func commandsOnANonSEVVMAreRefusedByName() throws {
        guard let kvm = try? KVMSystem() else {
            Issue.record("/dev/kvm is required for this test on our machines")
            return
        }
        let vm = try kvm.createVirtualMachine()
        let start = SNPLaunchStartParameters(policy: SNPGuestPolicy.standard.rawValue)
        do {
            try vm.snpLaunchStart(start, sevFileDescriptor: -1)
            Issue.record("KVM_SEV_SNP_LAUNCH_START succeeded on a default VM")
        } catch let error as SEVCommandError {
            #expect(error.command == .snpLaunchStart)
            #expect(error.description.hasPrefix("KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_START) failed: "))
        }
        #expect(throws: SEVCommandError.self) { try vm.snpEnableCertificateRequests(sevFileDescriptor: -1) }
        #expect(throws: SEVCommandError.self) { try vm.sevInitialize(SEVInitParameters(), sevFileDescriptor: -1) }
        #expect(throws: SEVCommandError.self) { try vm.snpLaunchUpdate(SNPLaunchUpdateParameters(guestFrameNumber: 0, userspaceAddress: 0, length: 4096, pageType: 1), sevFileDescriptor: -1) }
        #expect(throws: SEVCommandError.self) { try vm.snpLaunchFinish(SNPLaunchFinishParameters(), sevFileDescriptor: -1) }
        // The device attribute query answers rather than failing.
        _ = try kvm.supportsSNPCertificateRequests()
    }
}
