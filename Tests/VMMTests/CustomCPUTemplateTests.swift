import Foundation
import KVM
import Metadata
import Testing
@testable import VMM

/// Firecracker's custom CPU templates (`PUT /cpu-config`), the x86_64 form:
/// read as its docs write them, refused by field, applied to CPUID.
@Suite struct CustomCPUTemplateTests {
    static func parse(_ text: String) throws -> CustomCPUTemplate {
        try CustomCPUTemplate.parse(try JSONValue.parse(Array(text.utf8)), source: "cpu-config")
    }

    /// The example in Firecracker's docs/cpu_templates/cpu-templates.md.
    @Test func firecrackersDocumentedExampleIsReadAndApplied() throws {
        let template = try Self.parse(#"""
            {"kvm_capabilities": ["!56"],
             "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                                  "modifiers": [{"register": "eax", "bitmap": "0bxxxx000000000011xx00011011110010"}]}],
             "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0000000000000000000000000000000000000000000000000000000000000000"}]}
            """#)
        #expect(template.waivedCapabilities == [56] && template.requiredCapabilities.isEmpty)
        #expect(template.cpuid.count == 1 && template.cpuid[0].leaf == 1 && template.cpuid[0].registers.first?.register == "eax")
        // The docs: clear 0b00001111111111000011100100001101, set 0b00000000000000110000011011110010, keep 0b11110000000000001100000000000000.
        let filter = try #require(template.cpuid[0].registers.first?.filter)
        #expect(filter.mask == 0b0000_1111_1111_1111_0011_1111_1111_1111 && filter.bits == 0b0000_0000_0000_0011_0000_0110_1111_0010)
        #expect(template.msrs == [.init(address: 0x10A, filter: .init(mask: .max, bits: 0))])
        let table = template.apply(to: CPUIDTable(entries: [CPUIDEntry(function: 1, eax: 0xFFFF_FFFF, ebx: 7)]))
        #expect(table.entry(function: 1)?.eax == UInt32(0xF000_C000 | 0b0000_0000_0000_0011_0000_0110_1111_0010))
        #expect(table.entry(function: 1)?.ebx == 7, "registers without a modifier are kept")
    }

    @Test func aLeafTheTableLacksIsAddedAndShortBitmapsKeepTheHighBits() throws {
        let template = try Self.parse(#"""
            {"cpuid_modifiers": [{"leaf": "0x40000010", "subleaf": "0b1", "flags": 1, "modifiers": [{"register": "edx", "bitmap": "0b1_0x"}]}]}
            """#)
        let table = template.apply(to: CPUIDTable(entries: []))
        let entry = try #require(table.entries.first)
        #expect(entry.function == 0x4000_0010 && entry.index == 1 && entry.flags == 1 && entry.edx == 0b100)
        #expect(template.apply(to: CPUIDTable(entries: [CPUIDEntry(function: 0x4000_0010, index: 1, flags: 1, edx: 0xFFFF_FFFF)]))
                    .entries.first?.edx == 0xFFFF_FFFD, "0b1_0x: bit 2 set, bit 1 cleared, the rest kept")
    }

    /// An entry without the significant-index flag serves every sub-leaf: a
    /// modifier naming sub-leaf 2 changes it in place rather than adding one
    /// KVM would never read.
    @Test func anEntryForEverySubleafIsChangedInPlace() throws {
        let template = try Self.parse(#"{"cpuid_modifiers": [{"leaf": "0x6", "subleaf": "0x2", "modifiers": [{"register": "eax", "bitmap": "0b0"}]}]}"#)
        let table = template.apply(to: CPUIDTable(entries: [CPUIDEntry(function: 6, eax: 0xFF)]))
        #expect(table.entries.count == 1 && table.entries.first?.index == 0 && table.entries.first?.eax == 0xFE)
    }

    @Test func badTemplatesAreRefusedByField() {
        let tooLong = String(repeating: "x", count: 33)
        let cases: [(String, String)] = [
            (#"[]"#, "cpu-config must be an object"),
            (#"{"vcpu_features": []}"#, "cpu-config.vcpu_features is for aarch64 hosts; this one is x86_64"),
            (#"{"bogus": 1}"#, "cpu-config.bogus is not a field of a custom CPU template (known: kvm_capabilities, cpuid_modifiers, msr_modifiers)"),
            (#"{"kvm_capabilities": [56]}"#, "cpu-config.kvm_capabilities[0] must be a string such as \"171\" or \"!172\""),
            (#"{"kvm_capabilities": ["!x"]}"#, "cpu-config.kvm_capabilities[0] \"!x\" is not a decimal capability number, with ! in front to waive it"),
            (#"{"cpuid_modifiers": [{"subleaf": "0x0", "modifiers": []}]}"#, "cpu-config.cpuid_modifiers[0].leaf is required"),
            (#"{"cpuid_modifiers": [{"leaf": "1", "modifiers": []}]}"#, "cpu-config.cpuid_modifiers[0].leaf \"1\" is not a 32-bit number written 0x... or 0b..."),
            (#"{"cpuid_modifiers": [{"leaf": "0x100000000", "modifiers": []}]}"#, "cpu-config.cpuid_modifiers[0].leaf \"0x100000000\" is not a 32-bit number written 0x... or 0b..."),
            (#"{"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "esi", "bitmap": "0b1"}]}]}"#,
             "cpu-config.cpuid_modifiers[0].modifiers[0].register must be eax, ebx, ecx or edx"),
            (#"{"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "eax", "bitmap": "0b2"}]}]}"#,
             "cpu-config.cpuid_modifiers[0].modifiers[0].bitmap \"0b2\" is not 0b followed by at most 32 of 0, 1 or x"),
            (#"{"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "eax", "bitmap": "0b\#(tooLong)"}]}]}"#,
             "cpu-config.cpuid_modifiers[0].modifiers[0].bitmap \"0b\(tooLong)\" is not 0b followed by at most 32 of 0, 1 or x"),
            (#"{"msr_modifiers": [{"addr": "0x10a"}]}"#, "cpu-config.msr_modifiers[0].bitmap is required: a string 0b followed by 64 of 0, 1 or x"),
            (#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b1", "extra": 1}]}"#, "cpu-config: cpu-config.msr_modifiers[0].extra is not supported (known: addr, bitmap)"),
        ]
        for (text, message) in cases {
            #expect(throws: ConfigurationError(message), "\(text)") { try Self.parse(text) }
        }
    }

    /// MSR modifiers on a real vCPU (this host's KVM): IA32_MISC_ENABLE
    /// (0x1a0) read, its low byte replaced, read back; an MSR KVM does not
    /// have fails with its number.
    @Test(.enabled(if: access("/dev/kvm", R_OK | W_OK) == 0, "needs /dev/kvm")) func msrModifiersReachTheVCPU() throws {
        let vm = try KVMSystem().createVirtualMachine()
        let vcpu = try vm.createVCPU(id: 0)
        let before = try vcpu.msr(0x1A0)
        let template = try Self.parse(#"{"msr_modifiers": [{"addr": "0x1a0", "bitmap": "0b10000001"}]}"#)
        try template.applyMSRs(to: vcpu)
        #expect(try vcpu.msr(0x1A0) == before & ~0xFF | 0x81)
        let missing = try Self.parse(#"{"msr_modifiers": [{"addr": "0xdeadbeef", "bitmap": "0b1"}]}"#)
        #expect(throws: ConfigurationError("cpu-config: KVM does not let this vCPU read MSR 0xdeadbeef")) { try missing.applyMSRs(to: vcpu) }
    }

    /// A config file takes the template inline or as a path, as Firecracker's does.
    @Test func aConfigFileTakesTheTemplateOrItsPath() throws {
        let directory = "/tmp/kestrel-cpuconfig-\(getpid())"
        _ = mkdir(directory, 0o700)
        defer { unlink(directory + "/t.json"); rmdir(directory) }
        let body = #"{"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "ecx", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}]}"#
        #expect(FileManager.default.createFile(atPath: directory + "/t.json", contents: Data(body.utf8)))
        for section in [body, "\"\(directory)/t.json\""] {
            let configuration = try MachineConfigFile.parse(Array(#"{"boot-source": {"kernel_image_path": "/k"}, "cpu-config": \#(section)}"#.utf8), source: "vm.json")
            #expect(configuration.customCPUTemplate?.cpuid.first?.registers.first?.filter == .init(mask: 1 << 31, bits: 0))
        }
        #expect(throws: ConfigurationError.self) {
            try MachineConfigFile.parse(Array(#"{"boot-source": {"kernel_image_path": "/k"}, "cpu-config": "/nonexistent.json"}"#.utf8), source: "vm.json")
        }
    }
}
