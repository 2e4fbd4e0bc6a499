import GuestMemory
import HostSystem
import KVM
import Testing
@testable import GuestKit

/// KVM_IOEVENTFD and KVM_IRQFD against this host's KVM, with a real-mode guest.
@Suite(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"), .timeLimit(.minutes(5))) struct EventNotifierTests {
    @Test func anIOEventSignalsOnlyForItsValueAndSkipsTheExit() throws {
        let machine = try GuestMachine(kvm: KVMSystem())
        let notifier = try EventNotifier()
        try machine.vm.attachIOEvent(notifier, at: 0x510, length: 4, in: .port, matching: 7)
        try machine.loadRealMode(code: [
            0xBA, 0x10, 0x05,                          // mov dx, 0x510
            0x66, 0xB8, 0x08, 0x00, 0x00, 0x00,        // mov eax, 8
            0x66, 0xEF,                                // out dx, eax   (not the value: exits)
            0x66, 0xB8, 0x07, 0x00, 0x00, 0x00,        // mov eax, 7
            0x66, 0xEF,                                // out dx, eax   (the value: eventfd, no exit)
            0xBA, 0x00, 0x06,                          // mov dx, 0x600
            0xEE,                                      // out dx, al
            0xEB, 0xFE,                                // jmp $
        ])
        guard case .io(let first) = try machine.runUntilExit() else { Issue.record("no I/O exit for the unmatched value"); return }
        #expect(first.port == 0x510 && first.value == 8)
        #expect(notifier.drain() == 0)
        guard case .io(let second) = try machine.runUntilExit() else { Issue.record("no I/O exit at port 0x600"); return }
        #expect(second.port == 0x600, "the matched write to 0x510 did not exit")
        #expect(notifier.drain() == 1)
        try machine.vm.detachIOEvent(notifier, at: 0x510, length: 4, in: .port, matching: 7)
        #expect(throws: SystemCallError.self) { try machine.vm.detachIOEvent(notifier, at: 0x510, length: 4, in: .port, matching: 7) }
    }

    @Test func anIrqfdAttachesOnceToAnInterruptLine() throws {
        let vm = try KVMSystem().createVirtualMachine()
        try vm.createInterruptController()
        let notifier = try EventNotifier()
        try vm.attachInterrupt(notifier, gsi: 5)
        #expect(throws: SystemCallError.self, "the same eventfd twice is EBUSY") { try vm.attachInterrupt(notifier, gsi: 5) }
        notifier.signal()
        try vm.detachInterrupt(notifier, gsi: 5)
        try vm.attachInterrupt(notifier, gsi: 5)
    }
}
