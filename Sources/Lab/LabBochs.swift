import Glibc

/// The lab's Intel host: Debian trixie's Bochs 3.0, which emulates VMX (EPT,
/// VPID, unrestricted guest) and CET, so that an L1 loads kvm_intel. It runs
/// from a Debian trixie root that the lab builds with debootstrap and keeps in
/// its cache, because Debian 12 has no Bochs that can run Linux: sid's 3.1
/// computes 64-bit IDIV wrongly (FINDINGS.md, section 9).
///
/// Bochs cannot load a kernel itself, so each boot gets an ISOLINUX CD with
/// the L1 kernel and the lab's initramfs. The four serial ports go to files,
/// in the order `LabSerialPorts` gives them. Debian builds Bochs without a
/// `nogui` display, so it runs with the `term` display under `script`, which
/// gives it a terminal and reads the screen it draws there (Bochs stops after
/// a few minutes when nothing reads it).
public struct LabBochs: Sendable, Equatable {
    /// The root it runs in.
    public let root: DebianRoot

    /// The suite whose Bochs works: trixie's 3.0+dfsg-1.
    public static let suite = "trixie"
    /// What the root holds: Bochs with its BIOS, VGA BIOS and term display,
    /// and what builds the CD (ISOLINUX, syslinux's ldlinux.c32, xorriso).
    public static let packages = ["bochs", "bochsbios", "vgabios", "bochs-term", "isolinux", "syslinux-common", "xorriso"]

    /// The CPU models whose VMX runs the lab's 7.2 L1 with kvm_intel, CET
    /// included. Others Bochs knows are refused by name: sapphire_rapids,
    /// for one, stops the 7.2 kernel with #GP on XSETBV.
    public static let models = ["arrow_lake", "tigerlake"]
    /// The model used when none is named.
    public static let defaultModel = "arrow_lake"

    /// Why `model` cannot be used, or nil when it is one of `models`.
    public static func unknownModel(_ model: String) -> String? {
        models.contains(model) ? nil : "\(model) is not a CPU model the Bochs host runs (\(models.joined(separator: ", ")))"
    }

    /// Kernel arguments every Bochs L1 gets unless `--keep-pku`. `nopku`
    /// keeps PKRU out of the L1's XCR0. With it in, KVM restores a guest's
    /// FPU state with XRSTORS and a mask without PKRU, and Bochs 3.0 places
    /// the compacted components after PKRU as though PKRU took no space, so
    /// the guest's CET state is loaded from the wrong offsets (FINDINGS.md
    /// section 18; `cet_msrs.xrstors_compacted_offsets` shows it in a guest).
    public static let kernelArguments = "nopku"

    /// The root with Bochs, from the cache or built now (debootstrap of
    /// trixie's minbase: about a minute and a half once). Needs root.
    public static func prepare(cache: LabCache, progress: (String) -> Void) throws -> LabBochs {
        LabBochs(root: try DebianRoot.prepare(suite: suite, packages: packages, buildTools: false, cache: cache, progress: progress))
    }

    /// "Bochs 3.0+dfsg-1", the package's version in the root.
    public func version() -> String {
        guard let status = try? readText(root.hostPath("/var/lib/dpkg/status")) else { return "Bochs (version unknown)" }
        return Self.version(fromDpkgStatus: status).map { "Bochs " + $0 } ?? "Bochs (version unknown)"
    }

    /// The `bochs` package's version in a dpkg status file.
    static func version(fromDpkgStatus status: String) -> String? {
        for stanza in status.split(separator: "\n\n") {
            let lines = stanza.split(separator: "\n")
            guard lines.contains("Package: bochs") else { continue }
            return lines.first { $0.hasPrefix("Version: ") }.map { String($0.dropFirst("Version: ".count)) }
        }
        return nil
    }

    /// Writes the CD (`boot.iso`) and the configuration (`bochsrc`) for one
    /// boot into `directory`, where the serial ports' files will be too.
    /// `initrd` must be in `directory`: the CD takes it from there.
    /// With `interactive`, COM1 (the L1's shell) is the terminal that
    /// `command(directory:terminal:)` binds into the root, in Bochs's `term` mode.
    public func prepareBoot(kernel: String, initrd: String, commandLine: String, model: String, cpus: Int, memoryMiB: Int,
                            directory: String, interactive: Bool = false) throws {
        let tree = directory + "/iso"
        try makeDirectories(tree + "/isolinux")
        try copyFile(root.hostPath("/usr/lib/ISOLINUX/isolinux.bin"), to: tree + "/isolinux/isolinux.bin")
        try copyFile(root.hostPath("/usr/lib/syslinux/modules/bios/ldlinux.c32"), to: tree + "/isolinux/ldlinux.c32")
        try copyFile(kernel, to: tree + "/vmlinuz")
        guard initrd.hasPrefix(directory + "/"), !initrd.dropFirst(directory.count + 1).contains("/") else {
            throw LabError("the L1's initramfs \(initrd) is not in the boot directory \(directory)")
        }
        try writeFileAtomically(Array(Self.isolinuxConfiguration(commandLine: commandLine).utf8), to: tree + "/isolinux/isolinux.cfg")
        let inside = DebianRoot.boundDirectory
        try root.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", inside + "/boot.iso",
                      "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
                      "-graft-points", "/=" + inside + "/iso", "/initrd=" + inside + "/" + initrd.dropFirst(directory.count + 1)],
                     binding: directory, what: "building the L1's boot CD with xorriso")
        removeTree(tree)
        let configuration = Self.configuration(model: model, cpus: cpus, memoryMiB: memoryMiB, directory: inside,
                                               terminal: interactive ? DebianRoot.boundTerminal : nil)
        try writeFileAtomically(Array(configuration.utf8), to: directory + "/bochsrc")
    }

    /// The command that runs Bochs on what `prepareBoot` wrote; `terminal`
    /// is the host's terminal device for an interactive boot's COM1.
    public func command(directory: String, terminal: String? = nil) -> [String] {
        root.command(["script", "-q", "-f", "-e", "-c", "bochs -q -f \(DebianRoot.boundDirectory)/bochsrc", "/dev/null"], binding: directory,
                     terminals: true, terminal: terminal)
    }

    /// ISOLINUX's configuration: boot the kernel at once with the initramfs.
    static func isolinuxConfiguration(commandLine: String) -> String {
        """
        DEFAULT lab
        PROMPT 0
        TIMEOUT 0
        LABEL lab
          KERNEL /vmlinuz
          INITRD /initrd
          APPEND \(commandLine)

        """
    }

    /// Bochs's configuration. `directory` is where the CD is and where the
    /// serial ports' files go, as Bochs sees it. The clock follows the host's,
    /// so that the L1's timers (its heartbeat among them) tick in real time.
    static func configuration(model: String, cpus: Int, memoryMiB: Int, directory: String, terminal: String? = nil) -> String {
        var lines = [
            "megs: \(memoryMiB)",
            "cpu: model=\(model), count=\(cpus), reset_on_triple_fault=0",
            "romimage: file=/usr/share/bochs/BIOS-bochs-latest",
            "vgaromimage: file=/usr/share/vgabios/vgabios.bin",
            "ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14",
            "ata0-master: type=cdrom, path=\(directory)/boot.iso, status=inserted",
            "boot: cdrom",
            "display_library: term",
            "clock: sync=realtime, time0=local",
            "log: \(directory)/bochs.log",
            "panic: action=fatal",
            "error: action=report",
            "info: action=report",
            "debug: action=ignore",
        ]
        for (index, port) in LabSerialPorts.all.enumerated() {
            if index == 0, let terminal {
                // Bochs puts the device in raw mode (keeping Ctrl-C as a signal) and reads and writes it directly.
                lines.append("com1: enabled=1, mode=term, dev=\(terminal)")
            } else {
                lines.append("com\(index + 1): enabled=1, mode=file, dev=\(directory)/\(Self.serialFiles[port.chardev] ?? port.chardev)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The file each serial port writes, as `LabMachine` reads them.
    static let serialFiles = ["out": "out", "console": "console.log", "err": "errors", "status": "status"]
}

/// Copies a file (the whole of it, through memory).
func copyFile(_ source: String, to destination: String) throws {
    try writeFileAtomically(try readBytes(source), to: destination)
}
