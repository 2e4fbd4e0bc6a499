@testable import Lab
import Testing

/// A minimal ELF64 relocatable object with a `.modinfo` section, the shape of a kernel module.
func craftedModule(modinfo: [String]) -> [UInt8] {
    let info = Array(modinfo.joined(separator: "\0").utf8) + [0]
    let names = Array("\0.modinfo\0.shstrtab\0".utf8)
    let infoOffset = 64, namesOffset = infoOffset + info.count
    let sectionTable = (namesOffset + names.count + 7) & ~7
    var bytes = [UInt8](repeating: 0, count: sectionTable + 3 * 64)
    func put(_ value: UInt64, at offset: Int, size: Int) {
        for index in 0..<size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
    }
    bytes.replaceSubrange(0..<6, with: [0x7F, 0x45, 0x4C, 0x46, 2, 1])
    put(1, at: 0x10, size: 2)                    // ET_REL
    put(62, at: 0x12, size: 2)                   // x86-64
    put(UInt64(sectionTable), at: 0x28, size: 8)
    put(64, at: 0x3A, size: 2)
    put(3, at: 0x3C, size: 2)
    put(2, at: 0x3E, size: 2)                    // .shstrtab is section 2
    bytes.replaceSubrange(infoOffset..<(infoOffset + info.count), with: info)
    bytes.replaceSubrange(namesOffset..<(namesOffset + names.count), with: names)
    for (index, name, offset, size) in [(1, 1, infoOffset, info.count), (2, 10, namesOffset, names.count)] {
        let base = sectionTable + index * 64
        put(UInt64(name), at: base, size: 4)
        put(UInt64(offset), at: base + 24, size: 8)
        put(UInt64(size), at: base + 32, size: 8)
    }
    return bytes
}

@Suite(.timeLimit(.minutes(5))) struct KernelModuleTests {
    @Test func moduleNamesUseUnderscores() {
        #expect(KernelModule.moduleName(fileName: "kernel/arch/x86/kvm/kvm-amd.ko.xz") == "kvm_amd")
        #expect(KernelModule.moduleName(fileName: "irqbypass.ko") == "irqbypass")
    }

    @Test func modinfoGivesTheNameAndDependencies() throws {
        let module = try KernelModule(file: craftedModule(modinfo: ["license=GPL", "depends=kvm,irqbypass", "name=kvm_amd"]), fileName: "kvm-amd.ko")
        #expect(module.name == "kvm_amd")
        #expect(module.dependencies == ["kvm", "irqbypass"])
        let none = try KernelModule(file: craftedModule(modinfo: ["depends="]), fileName: "irqbypass.ko")
        #expect(none.name == "irqbypass")
        #expect(none.dependencies.isEmpty)
    }

    @Test func brokenObjectsAreRefusedWithTheFileName() {
        #expect(throws: LabError.self) { try KernelModule(file: Array("not an elf".utf8), fileName: "x.ko") }
        var truncated = craftedModule(modinfo: ["name=x"])
        truncated.removeLast(100)
        #expect(throws: LabError.self) { try KernelModule(file: truncated, fileName: "x.ko") }
    }

    @Test func loadOrderPutsDependenciesFirstAndNamesWhatIsMissing() throws {
        func module(_ name: String, _ dependencies: [String]) throws -> KernelModule {
            try KernelModule(file: craftedModule(modinfo: ["name=\(name)", "depends=\(dependencies.joined(separator: ","))"]), fileName: name)
        }
        let available = [
            "kvm_amd": try module("kvm_amd", ["kvm", "ccp"]), "kvm": try module("kvm", ["irqbypass"]),
            "irqbypass": try module("irqbypass", []), "ccp": try module("ccp", []),
        ]
        #expect(try KernelModule.loadOrder(["kvm_amd"], available: available).map(\.name) == ["irqbypass", "kvm", "ccp", "kvm_amd"])
        var missing = available
        missing["irqbypass"] = nil
        #expect { try KernelModule.loadOrder(["kvm_amd"], available: missing) } throws: { "\($0)".contains("irqbypass is missing (kvm depends on it)") }
        var cycle = available
        cycle["irqbypass"] = try module("irqbypass", ["kvm_amd"])
        #expect { try KernelModule.loadOrder(["kvm_amd"], available: cycle) } throws: { "\($0)".contains("cycle") }
    }
}

@Suite(.timeLimit(.minutes(5))) struct LabPieceTests {
    @Test func theMirrorComesFromEitherSourcesFormatAndNeverTheSecurityArchive() {
        let deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n\nURIs: http://security.example/debian-security\n"
        #expect(DebianArchive.mirror(inSources: deb822) == "http://mirror.example/debian")
        #expect(DebianArchive.mirror(inSources: "deb [arch=amd64 signed-by=/k.gpg] https://m.example/debian/ bookworm main\n") == "https://m.example/debian")
        #expect(DebianArchive.mirror(inSources: "deb http://security.example/debian-security bookworm-security main\n") == nil)
        #expect(DebianArchive.mirror(inSources: "# deb http://m.example/debian bookworm main\n") == nil)
    }

    @Test func privateAptStateStaysUnderTheLabCache() throws {
        #expect(throws: LabError.self) { try DebianArchive(root: "/cache/apt", sourcesFiles: []) }
        let directory = try TemporaryDirectory(prefix: "kestrel-sources")
        try writeFileAtomically(Array("URIs: http://mirror.example/debian\n".utf8), to: directory.path + "/debian.sources")
        let archive = try DebianArchive(root: "/cache/apt", sourcesFiles: [directory.path + "/debian.sources"])
        #expect(archive.sourcesList.split(separator: "\n").count == DebianArchive.suites.count)
        #expect(archive.sourcesList.hasPrefix("deb [signed-by=\(DebianArchive.keyring)] http://mirror.example/debian bookworm main"))
        let paths = archive.aptOptions.filter { $0.contains("/") && !$0.hasPrefix("-") }
        #expect(!paths.isEmpty)
        #expect(paths.allSatisfy { $0.contains("=/cache/apt/") })
    }

    /// An archive that cannot be reached is an error naming the mirror and apt's message.
    @Test func anUnreachableArchiveIsNamed() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-apt")
        try writeFileAtomically(Array("URIs: http://127.0.0.1:9/debian\n".utf8), to: directory.path + "/debian.sources")
        let archive = try DebianArchive(root: directory.path + "/apt", sourcesFiles: [directory.path + "/debian.sources"])
        #expect { try archive.update(progress: { _ in }) } throws: { error in
            let text = "\(error)"
            return text.contains("cannot reach the Debian archive at http://127.0.0.1:9/debian") && text.contains("127.0.0.1")
        }
        #expect(!fileExists(directory.path + "/apt/state/updated"))
    }

    @Test func newerKernelPackagesSortLater() {
        let names = ["linux-image-6.12.9+deb12-cloud-amd64", "linux-image-6.12.107+deb13-cloud-amd64", "linux-image-6.12.95+deb12-cloud-amd64"]
        #expect(names.max(by: KernelFetcher.versionOrder) == "linux-image-6.12.107+deb13-cloud-amd64")
        #expect(["linux-image-6.1.0-9-cloud-amd64", "linux-image-6.1.0-50-cloud-amd64"].max(by: KernelFetcher.versionOrder) == "linux-image-6.1.0-50-cloud-amd64")
    }

    /// The microVM guest kernel is a lab kernel name, is found by it, and
    /// its recipe asks for what `acpi=off` guests and Kestrel's devices need.
    @Test func theMicroVMGuestKernelIsNamedAndAsksForWhatAnACPIOffGuestNeeds() {
        let recipe = GuestKernelBuild.microVM
        #expect(KernelFetcher.names.contains(recipe.name))
        #expect(GuestKernelBuild.recipe(named: "6.1-microvm") == recipe)
        #expect(GuestKernelBuild.recipe(named: "6.1") == nil)
        #expect(KernelFetcher.series(named: recipe.base) != nil)
        for option in ["X86_MPPARSE", "VIRTIO_MMIO_CMDLINE_DEVICES", "ACPI", "DEVMEM", "SERIAL_8250_CONSOLE",
                       "VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_VSOCKETS", "HW_RANDOM_VIRTIO", "VIRTIO_BALLOON"] {
            #expect(recipe.options.contains(option), "\(option)")
        }
        var changed = recipe
        changed.options.append("IKCONFIG")
        #expect(changed.fingerprint != recipe.fingerprint, "a changed recipe builds anew")
        let guestOnly = LabKernel(name: recipe.name, release: "6.1.176-kestrel-microvm", packages: [], directory: "/nowhere",
                                  amdModules: [], intelModules: [], hostModules: [], guestModules: [], modulesLookedFor: nil)
        #expect(guestOnly.isGuestOnly)
        var host = guestOnly
        host.amdModules = ["kvm", "kvm_amd"]
        #expect(!host.isGuestOnly)
    }

    @Test func staticExecutablesHaveNoInterpreter() throws {
        #expect(LabExecutable.isStatic(try readBytes("/bin/busybox")))
        #expect(!LabExecutable.isStatic(try readBytes("/bin/ls")))
        #expect(!LabExecutable.isStatic(Array("#!/bin/sh\n".utf8)))
    }

    @Test func shellQuotingSurvivesQuotes() {
        #expect(shellQuoted("plain-word") == "plain-word")
        #expect(shellQuoted("it's") == #"'it'\''s'"#)
        #expect(shellQuoted("") == "''")
    }
}

@Suite(.timeLimit(.minutes(5))) struct LabMatrixTests {
    static func document(_ verdicts: [(String, String)]) -> String {
        let results = verdicts.map { #"{"id": "\#($0.0)", "suite": "s", "outcome": "\#($0.1)", "detail": "why \#($0.0)", "seconds": 0.1, "log": []}"# }
        return "progress line\n{\n\"metadata\": {\"kestrel\": \"0.1.0\"}, \"results\": [\(results.joined(separator: ","))],\n"
            + #""totals": {"passed": 1, "failed": 1, "skipped": 0, "seconds": 0.2}}"#
    }

    @Test func theDocumentIsFoundAfterOtherOutput() throws {
        let parsed = try CheckDocument.parse(Self.document([("a", "pass"), ("b", "fail")]))
        #expect(parsed.results.map(\.id) == ["a", "b"])
        #expect(parsed.totals.failed == 1)
        #expect(throws: LabError.self) { try CheckDocument.parse("no json here") }
    }

    @Test func rowsWhoseVerdictDependsOnTheHostAreMarked() throws {
        let local = MatrixColumn(title: "local", host: "this machine", document: try CheckDocument.parse(Self.document([("a", "pass"), ("b", "fail")])))
        let l1 = MatrixColumn(title: "7.2", host: "L1 7.2", document: try CheckDocument.parse(Self.document([("a", "pass"), ("b", "pass"), ("c", "skip")])))
        let broken = MatrixColumn(title: "6.1", host: "L1 6.1", document: nil, error: "the L1 ended without reporting a status")
        let matrix = LabMatrix(columns: [local, l1, broken])
        #expect(matrix.testIDs == ["a", "b", "c"])
        #expect(!matrix.differs("a"))
        #expect(matrix.differs("b"))
        #expect(!matrix.differs("c"))  // only one host has it
        let text = matrix.render()
        #expect(text.contains("≠ b "))
        #expect(text.contains("  a "))
        #expect(text.contains("no result: the L1 ended without reporting a status"))
        #expect(text.contains("b on local: FAIL: why b"))
        #expect(text.contains("3 tests on 3 hosts; 1 verdicts depend on the host"))
    }
}

@Suite(.timeLimit(.minutes(5))) struct ConsoleLineTests {
    @Test func serialLinesSplitOnCarriageReturnLineFeed() {
        let console = "[    0.1] one\r\n[    0.2] BUG: kernel NULL pointer dereference\r\n[    0.3] three\r\n"
        #expect(consoleLines(console) == ["[    0.1] one", "[    0.2] BUG: kernel NULL pointer dereference", "[    0.3] three"])
        #expect(LabHostDescription.kernelProblems(in: console) == ["[    0.2] BUG: kernel NULL pointer dereference"])
    }
}
