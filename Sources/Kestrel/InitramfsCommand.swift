import ArgumentParser
import Boot
import FoundationEssentials
import Glibc

/// `kestrel initramfs`: build a newc cpio initramfs.
struct InitramfsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "initramfs",
        abstract: "Build a newc cpio initramfs from a directory, or a busybox one whose init runs a command and powers off.",
        discussion: """
            Examples:
              kestrel initramfs --command 'uname -a' -o initramfs.cpio
              kestrel initramfs --from-dir rootfs/ -o initramfs.cpio
              kestrel initramfs --modules /lab/guest/modules --command 'cat /sys/block/vda/serial' -o initramfs.cpio
            The busybox init prints "kestrel-init: exit status N", writes N to Kestrel's exit device \
            (so `kestrel run` exits with N) and powers off.
            """)

    @Option(name: .customLong("from-dir"), help: "Archive this directory tree (adds dev/console if missing).") var directory: String?
    @Option(help: "The static busybox to use.") var busybox = "/bin/busybox"
    @Option(help: "The command the init runs (busybox sh syntax).") var command = "uname -a"
    @Option(help: "Load these kernel modules before the command: a directory with NAME.ko files and modules.order listing them in load order (the lab's /lab/guest/modules).")
    var modules: String?
    @Option(name: .customLong("add"), help: "Add a file: HOST[:GUEST] (GUEST defaults to /bin/NAME for executables, /NAME otherwise). Repeat for more.")
    var files: [String] = []
    @Option(name: [.short, .customLong("output")], help: "Where to write the archive.") var output: String
    @Flag(help: "Replace the output file if it exists.") var force = false

    func run() throws {
        let archive: [UInt8]
        do {
            let objects = try modules.map { try InitramfsBuilder.modules(in: $0) } ?? []
            let added = try files.map { spec -> (path: String, bytes: [UInt8], mode: UInt32) in
                let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
                guard let host = parts.first, let data = FileManager.default.contents(atPath: host) else { throw CommandFailure("--add \(spec): cannot read \(parts.first ?? spec)") }
                let executable = access(host, X_OK) == 0
                let name = host.split(separator: "/").last.map(String.init) ?? host
                return (parts.count > 1 ? parts[1] : (executable ? "/bin/" : "/") + name, [UInt8](data), executable ? 0o755 : 0o644)
            }
            archive = try directory.map { try InitramfsBuilder.fromDirectory($0) }
                ?? InitramfsBuilder.busybox(binary: busybox, command: command, modules: objects, files: added)
        } catch let error as CPIOError {
            throw CommandFailure(error.description)
        }
        try writeNewFile(archive, to: output, replacing: force)
        print("wrote \(output): \(archive.count) bytes")
    }
}
