import Confidential
import GuestMemory
import KVM
import Testing

/// The realm's configuration rules and launch plan, with crafted
/// configurations: each rule refuses by name, and the plan lists what a
/// launch would do.
@Suite(.timeLimit(.minutes(5))) struct RealmPlanTests {
    static let ram = RealmConfiguration.RAM(name: "ram", range: 0x4000_0000..<0x8000_0000)

    static func configuration(_ edit: (inout RealmConfiguration) -> Void = { _ in }) throws -> RealmConfiguration {
        var configuration = RealmConfiguration(
            machineType: try ARM64MachineType(.realm, ipaBits: 40), ram: [ram],
            devices: [.init(name: "virtio-blk", range: 0x0A00_0000..<0x0A00_1000)],
            payloads: [.init(name: "kernel Image", address: 0x4020_0000, size: 0x1234_567),
                       .init(name: "device tree", address: 0x4800_0000, size: 0x2000),
                       .init(name: "initrd", address: 0x4400_0000, size: 0x10_0001)],
            vcpuCount: 2, entry: 0x4020_0000, entryArgument: 0x4800_0000)
        edit(&configuration)
        return configuration
    }

    static func violation(_ edit: (inout RealmConfiguration) -> Void) throws -> RealmRuleViolation? {
        do {
            try RealmMemoryRules.validate(try configuration(edit))
            return nil
        } catch let violation as RealmRuleViolation {
            return violation
        }
    }

    @Test func aGoodConfigurationPasses() throws {
        try RealmMemoryRules.validate(try Self.configuration())
    }

    @Test func mapPrivateSharedMemoryIsRefusedNamingTheBug() throws {
        let refused = try #require(try Self.violation { $0.ram[0].sharedMapping = .private })
        #expect(refused.rule == "realm.shared-memory-is-map-shared")
        #expect(refused.description.contains("MAP_PRIVATE") && refused.description.contains("virtio: zero sized buffers are not allowed"))
    }

    @Test func privateMemoryMustBeGuestMemfd() throws {
        let refused = try #require(try Self.violation { $0.ram[0].privateBacking = .hostMemory })
        #expect(refused.rule == "realm.private-memory-is-guest-memfd")
    }

    @Test func devicesMustNotOverlapProtectedMemory() throws {
        let refused = try #require(try Self.violation { $0.devices.append(.init(name: "bad", range: 0x7FFF_F000..<0x8000_1000)) })
        #expect(refused.rule == "realm.devices-outside-protected-memory" && refused.description.contains("bad"))
        let above = try #require(try Self.violation { $0.devices.append(.init(name: "alias", range: 0x80_0000_0000..<0x80_0000_1000)) })
        #expect(above.rule == "realm.device-in-ipa-space")
    }

    @Test func ramMustStayInTheProtectedHalf() throws {
        // 40 bits: the protected half ends at 2^39.
        let refused = try #require(try Self.violation { $0.ram.append(.init(name: "high", range: 0x7F_FFFF_0000..<0x80_0001_0000)) })
        #expect(refused.rule == "realm.protected-ipa" && refused.description.contains("0x8000000000"))
    }

    @Test func otherRules() throws {
        #expect(try Self.violation { $0.ram.append(.init(name: "overlap", range: 0x7000_0000..<0x9000_0000)) }?.rule == "realm.ram-disjoint")
        #expect(try Self.violation { $0.ram[0].range = 0x4000_0000..<0x4000_0800 }?.rule == "realm.ram-aligned")
        #expect(try Self.violation { $0.payloads[0].address += 8; $0.entry += 8 }?.rule == "realm.payload-aligned")
        #expect(try Self.violation { $0.payloads.append(.init(name: "outside", address: 0x9000_0000, size: 16)) }?.rule == "realm.payload-in-ram")
        #expect(try Self.violation { $0.payloads.append(.init(name: "clash", address: 0x4800_1000, size: 16)) }?.rule == "realm.payload-disjoint")
        #expect(try Self.violation { $0.entry = 0x6000_0000 }?.rule == "realm.entry-is-measured")
        #expect(try Self.violation { $0.machineType = try! ARM64MachineType(.normal) }?.rule == "realm.vm-type")
    }

    @Test func thePlanListsRangesRIPASAndMeasuredOperationsInOrder() throws {
        let plan = try RealmLaunchPlan(try Self.configuration())
        // Payloads split the RAM range; populated pages are whole pages.
        #expect(plan.regions.map(\.name) == ["ram (not populated)", "ram: kernel Image", "ram (not populated)", "ram: initrd",
                                            "ram (not populated)", "ram: device tree", "ram (not populated)"])
        let kernel = plan.regions[1]
        #expect(kernel.protected == 0x4020_0000..<0x4143_5000)
        #expect(kernel.unprotectedAlias == 0x80_4020_0000..<0x80_4143_5000)
        #expect(kernel.ripas.contains("KVM_ARM_RMI_POPULATE") && kernel.ripas.contains("measured"))
        #expect(plan.regions[0].ripas.contains("set by KVM at activation (not measured)"))
        #expect(plan.regions[3].protected == 0x4400_0000..<0x4410_1000)  // 1 MiB + 1 byte: 257 pages
        // The measured operations: the three payloads in address order, then the RECs.
        let measured = plan.steps.filter { $0.measurement != nil }.map(\.operation)
        #expect(measured.count == 4)
        #expect(measured[0].contains("kernel Image") && measured[0].contains("creates the realm descriptor"))
        #expect(measured[1].contains("initrd") && measured[2].contains("device tree"))
        #expect(measured[3].hasPrefix("first KVM_RUN"))
        #expect(plan.steps.first?.operation == "KVM_CREATE_VM with KVM_VM_TYPE_ARM_REALM | KVM_VM_TYPE_ARM_IPA_SIZE(40) = 0x40000028")
        let text = plan.render()
        #expect(text.contains("unprotected alias = address | 0x8000000000"))
        #expect(text.contains("[0xa000000, 0xa001000) virtio-blk"))
        #expect(text.contains("v14"))
    }

    @Test func anUnmeasuredPayloadIsListedButNotMeasured() throws {
        let plan = try RealmLaunchPlan(try Self.configuration { $0.payloads[2].measured = false })
        #expect(plan.steps.filter { $0.measurement != nil }.count == 3)
        #expect(plan.regions[3].ripas.contains("contents not measured"))
    }
}
