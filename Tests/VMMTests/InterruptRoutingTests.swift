import KVM
import Testing
@testable import VMM

/// Kestrel's GSI table against this host's in-kernel irqchip: the PIT's
/// GSI 0 reaches IOAPIC input 2, where the MADT and the MP table put ISA
/// IRQ 0, and KVM's own table (the control) sends it to input 0.
@Suite(.timeLimit(.minutes(5))) struct InterruptRoutingTests {
    @Test func theTableMovesOnlyGSI0AndLeavesTheCascadeUnrouted() {
        let routes = InterruptRouting.legacyPC
        #expect(routes.filter { $0.gsi == 0 } == [InterruptRoute(gsi: 0, chip: .primaryPIC, pin: 0), InterruptRoute(gsi: 0, chip: .ioapic, pin: 2)])
        #expect(!routes.contains { $0.gsi == 2 }, "GSI 2 is the PICs' cascade")
        #expect(!routes.contains { $0.chip == .ioapic && $0.pin == 0 }, "nothing else lands on IOAPIC input 0")
        for gsi in UInt32(1)..<24 where gsi != 2 {
            #expect(routes.contains(InterruptRoute(gsi: gsi, chip: .ioapic, pin: gsi)), "GSI \(gsi)")
        }
        #expect(routes.contains(InterruptRoute(gsi: 9, chip: .secondaryPIC, pin: 1)))
        #expect(routes.allSatisfy { $0.chip == .ioapic || $0.pin < 8 })
        #expect(routes.count == 38)
    }

    /// The IOAPIC's inputs that GSI `gsi` raises (its redirection entries are
    /// masked from reset, so a raised input stays in `irr`).
    static func inputsRaised(by gsi: UInt32, routes: [InterruptRoute]?) throws -> UInt32? {
        let vm = try KVMSystem().createVirtualMachine()
        try vm.createInterruptController()
        if let routes { try vm.setInterruptRouting(routes) }
        try vm.setInterruptLine(gsi, active: true)
        return try vm.interruptControllerState(.ioapic).ioapicRequests
    }

    @Test(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"))
    func gsi0ReachesIOAPICInput2WithKestrelsTableAndInput0WithKVMs() throws {
        #expect(try Self.inputsRaised(by: 0, routes: nil) == 1 << 0, "KVM's default table (the control)")
        #expect(try Self.inputsRaised(by: 0, routes: InterruptRouting.legacyPC) == 1 << 2)
        #expect(try Self.inputsRaised(by: 2, routes: InterruptRouting.legacyPC) == 0)
        #expect(try Self.inputsRaised(by: 5, routes: InterruptRouting.legacyPC) == 1 << 5)
        #expect(try Self.inputsRaised(by: 23, routes: InterruptRouting.legacyPC) == 1 << 23)
    }

    @Test(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"))
    func aMachinesIrqchipUsesKestrelsTable() throws {
        let vm = try KVMSystem().createVirtualMachine()
        try MachineBuilder.createInterruptControllers(vm)
        try vm.setInterruptLine(0, active: true)
        #expect(try vm.interruptControllerState(.ioapic).ioapicRequests == 1 << 2)
    }

    @Test(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"))
    func aRouteToAPICPinPast7IsRefusedByName() throws {
        let vm = try KVMSystem().createVirtualMachine()
        try vm.createInterruptController()
        #expect { try vm.setInterruptRouting([InterruptRoute(gsi: 0, chip: .primaryPIC, pin: 8)]) } throws: {
            "\($0)".contains("KVM_SET_GSI_ROUTING")
        }
    }
}
