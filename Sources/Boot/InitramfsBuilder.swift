import FoundationEssentials
import Glibc

/// Builds initramfs archives: from a directory tree, or a minimal busybox
/// system whose /init runs one command, reports its status through Kestrel's
/// exit device and powers off.
public enum InitramfsBuilder {
    /// The archive of a directory tree (directories, regular files, symlinks).
    public static func fromDirectory(_ root: String) throws -> [UInt8] {
        var archive = CPIOArchive()
        let manager = FileManager.default
        guard Self.fileType(root) == S_IFDIR else { throw CPIOError("\(root) is not a directory") }
        let paths: [String]
        do { paths = try manager.subpathsOfDirectory(atPath: root) } catch { throw CPIOError("cannot list \(root)") }
        for path in paths.sorted() {
            let full = root + "/" + path
            var status = stat()
            guard lstat(full, &status) == 0 else { throw CPIOError("cannot read \(full): \(String(cString: strerror(errno)))") }
            let mode = UInt32(status.st_mode) & 0o7777
            switch status.st_mode & S_IFMT {
            case S_IFDIR: try archive.add(path, .directory, mode: mode)
            case S_IFLNK: try archive.add(path, .symlink(target: try manager.destinationOfSymbolicLink(atPath: full)), mode: 0o777)
            case S_IFREG:
                guard let data = manager.contents(atPath: full) else { throw CPIOError("cannot read \(full)") }
                try archive.add(path, .file([UInt8](data)), mode: mode)
            default: throw CPIOError("\(full) is neither a file, a directory nor a symlink")
            }
        }
        if !paths.contains("dev") { try archive.add("dev", .directory, mode: 0o755) }
        if !paths.contains("dev/console") { try archive.add("dev/console", .characterDevice(major: 5, minor: 1), mode: 0o600) }
        return archive.finished()
    }

    /// The file type bits of `path`, following a symlink (stat), or nil when it does not exist.
    private static func fileType(_ path: String) -> mode_t? {
        var status = stat()
        return stat(path, &status) == 0 ? status.st_mode & S_IFMT : nil
    }

    /// Where the archive keeps kernel modules.
    static let moduleDirectory = "lib/modules/kestrel"

    /// The /init script: mount the pseudo file systems, load `modules` in
    /// order, run `command` with busybox's sh, print and report its status,
    /// power off.
    public static func initScript(command: String, modules: [String] = []) -> String {
        let load = modules.isEmpty ? "" : """
            for module in \(modules.joined(separator: " ")); do
                insmod /\(moduleDirectory)/$module.ko || echo "kestrel-init: insmod $module failed"
            done

            """
        return """
        #!/bin/busybox sh
        /bin/busybox mkdir -p /proc /sys /dev /tmp
        /bin/busybox mount -t proc proc /proc
        /bin/busybox mount -t sysfs sysfs /sys
        /bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
        /bin/busybox --install -s /bin
        export PATH=/bin
        \(load)echo 'kestrel-init: running: \(command.replacing("'", with: "'\\''"))'
        ( \(command) )
        status=$?
        echo "kestrel-init: exit status $status"
        \(drainConsole)
        /bin/busybox devmem 0x\(String(0xD000_0000, radix: 16)) 8 $status
        /bin/busybox poweroff -f

        """
    }

    /// Waits until the console has sent everything written to it. A write to
    /// the serial console returns once its bytes are in the UART driver's
    /// transmit buffer (up to 4 KiB), which then drains a byte per interrupt;
    /// the exit device stops the VM at once, and whatever was still buffered
    /// was lost (the lab saw a guest's last 379 of 400 lines go, with its
    /// status delivered). Setting the console's own settings again through
    /// `stty` is a `tcsetattr(TCSADRAIN)`, which returns only once the driver's
    /// buffer is empty; `timeout` bounds it should the transmitter be stuck.
    static let drainConsole = "/bin/busybox timeout 10 /bin/busybox stty -F /dev/console \"$(/bin/busybox stty -F /dev/console -g 2>/dev/null)\" 2>/dev/null"

    /// Kernel modules in load order from `directory`: its `modules.order`
    /// names them (one per line, without `.ko`), each in `NAME.ko`.
    public static func modules(in directory: String) throws -> [(name: String, object: [UInt8])] {
        guard let order = FileManager.default.contents(atPath: directory + "/modules.order") else {
            throw CPIOError("cannot read \(directory)/modules.order (one module name per line, in load order)")
        }
        return try String(decoding: order, as: UTF8.self).split(whereSeparator: \.isNewline).map(String.init).filter { !$0.isEmpty }.map { name in
            guard !name.contains("/"), let data = FileManager.default.contents(atPath: "\(directory)/\(name).ko") else {
                throw CPIOError("modules.order names \(name), but \(directory)/\(name).ko cannot be read")
            }
            return (name, [UInt8](data))
        }
    }

    /// A busybox initramfs whose init loads `modules` (uncompressed objects, in
    /// order) and runs `command`.
    /// `files` are added too (guest path, bytes, mode), with their directories.
    public static func busybox(binary: String, command: String, modules: [(name: String, object: [UInt8])] = [],
                               files: [(path: String, bytes: [UInt8], mode: UInt32)] = []) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: binary) else {
            throw CPIOError("cannot read \(binary) (install busybox-static, or pass the path of a static busybox)")
        }
        let bytes = [UInt8](data)
        guard bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else { throw CPIOError("\(binary) is not an ELF executable") }
        var archive = CPIOArchive()
        for directory in ["bin", "dev", "proc", "sys", "tmp"] { try archive.add(directory, .directory, mode: 0o755) }
        try archive.add("dev/console", .characterDevice(major: 5, minor: 1), mode: 0o600)
        try archive.add("bin/busybox", .file(bytes), mode: 0o755)
        try archive.add("bin/sh", .symlink(target: "busybox"), mode: 0o777)
        for module in modules { try archive.addWithParents("\(moduleDirectory)/\(module.name).ko", .file(module.object), mode: 0o644) }
        for file in files { try archive.addWithParents(file.path, .file(file.bytes), mode: file.mode) }
        try archive.add("init", .file(Array(initScript(command: command, modules: modules.map(\.name)).utf8)), mode: 0o755)
        return archive.finished()
    }
}
