import Boot

/// The L1's initramfs: busybox, the static `kestrel`, the KVM modules of the
/// L1 kernel, the user's files, and an /init that loads KVM for the CPU's
/// vendor, runs the command and reports its exit status.
///
/// The L1's serial ports carry separate streams (see `LabSerialPorts`): the
/// command's standard output on COM1, the kernel console on COM2, the
/// command's standard error on COM3, and lab status lines on COM4.
public struct LabInitramfs {
    /// Seconds between the L1's heartbeat lines on the status port.
    public static let heartbeatSeconds = 5

    /// A file to put into the L1.
    public struct File: Sendable {
        public let guestPath: String
        public let source: Source
        public let mode: UInt32
        /// Seconds since the epoch, kept in the archive (Linux keeps it on
        /// unpacking): Python's compiled files are checked against their
        /// sources' times.
        public let modificationTime: UInt32

        public enum Source: Sendable {
            case host(String)
            case bytes([UInt8])
        }

        public init(guestPath: String, hostPath: String, mode: UInt32 = 0o644, modificationTime: UInt32 = 0) {
            self.guestPath = guestPath
            self.source = .host(hostPath)
            self.mode = mode
            self.modificationTime = modificationTime
        }

        public init(guestPath: String, bytes: [UInt8], mode: UInt32 = 0o644) {
            self.guestPath = guestPath
            self.source = .bytes(bytes)
            self.mode = mode
            self.modificationTime = 0
        }
    }

    /// What /init runs: a shell command line, or an interactive shell on COM1.
    public enum Command: Sendable, Equatable {
        case script(String)
        case interactiveShell
    }

    public var kernel: LabKernel
    public var busybox: String
    public var kestrel: String
    public var files: [File]
    public var command: Command
    /// Parameters for the modules /init loads, by module name
    /// ("kvm_intel": "enable_apicv=0").
    public var moduleParameters: [String: String] = [:]

    public init(kernel: LabKernel, busybox: String = "/bin/busybox", kestrel: String, files: [File] = [], command: Command) {
        self.kernel = kernel
        self.busybox = busybox
        self.kestrel = kestrel
        self.files = files
        self.command = command
    }

    /// Guest paths of the module objects.
    static let moduleDirectory = "lib/modules/lab"

    /// The /init script.
    public func initScript() -> String {
        let amd = kernel.amdModules.joined(separator: " "), intel = kernel.intelModules.joined(separator: " ")
        let run: String
        switch command {
        case .script:
            run = """
                stty -F /dev/ttyS0 raw -echo 2>/dev/null
                stty -F /dev/ttyS2 raw -echo 2>/dev/null
                sh /lab/command </dev/null >/dev/ttyS0 2>/dev/ttyS2
                """
        case .interactiveShell:
            run = """
                echo "kestrel lab: $(uname -r), KVM $kvm; 'exit' or Ctrl-D powers off"
                setsid -c sh -l </dev/ttyS0 >/dev/ttyS0 2>&1
                """
        }
        return """
            #!/bin/busybox sh
            /bin/busybox mount -t proc proc /proc
            /bin/busybox mount -t sysfs sysfs /sys
            /bin/busybox mount -t devtmpfs devtmpfs /dev
            /bin/busybox --install -s /bin
            export PATH=/bin:/lab/bin HOME=/root TERM=${TERM:-vt100}
            mkdir -p /root /tmp /run
            if grep -qw svm /proc/cpuinfo; then kvm=kvm_amd; modules="\(amd)"
            elif grep -qw vmx /proc/cpuinfo; then kvm=kvm_intel; modules="\(intel)"
            else kvm=none; modules=""; echo "kestrel lab: this CPU has neither SVM nor VMX" >/dev/ttyS1
            fi
            for module in $modules \((kernel.hostModules ?? []).joined(separator: " ")); do
                parameters=
            \(moduleParameterCases)    insmod /\(Self.moduleDirectory)/$module.ko $parameters || echo "kestrel lab: insmod $module failed" >/dev/ttyS1
            done
            # Forced emulation (the kernel's KVM_FEP prefix, ud2 then "kvm") for the
            # tests that drive KVM's instruction emulator on purpose.
            fep=/sys/module/kvm/parameters/force_emulation_prefix
            [ -w $fep ] && echo 1 > $fep
            cd /lab
            echo "ready $(cut -d' ' -f1 /proc/uptime) $kvm" >/dev/ttyS3
            # A heartbeat for the host: an L1 that stops running its own
            # processes is caught by its silence (LabMachine.heartbeatSilenceLimit).
            # Its PID is in /run/heartbeat.pid (a test stops it to play a frozen L1).
            sh -c 'echo $$ >/run/heartbeat.pid; while :; do sleep \(Self.heartbeatSeconds); echo "alive $(cut -d" " -f1 /proc/uptime)" >/dev/ttyS3; done' &
            exec </dev/ttyS0 >/dev/ttyS0 2>&1
            \(run)
            status=$?
            echo "status $status" >/dev/ttyS3
            sync
            poweroff -f

            """
    }

    /// A `case` that sets `$parameters` for the modules that have some
    /// (`build` refuses names and values with shell metacharacters).
    var moduleParameterCases: String {
        let cases = moduleParameters.sorted { $0.key < $1.key }
        guard !cases.isEmpty else { return "" }
        return "    case $module in " + cases.map { "\($0.key)) parameters=\"\($0.value)\";;" }.joined(separator: " ") + " esac\n"
    }

    /// The archive.
    public func build() throws -> [UInt8] {
        let plain = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_=,.- ")
        for (module, parameters) in moduleParameters where !(module + parameters).allSatisfy(plain.contains) || module.isEmpty {
            throw LabError("module parameters \"\(module): \(parameters)\" hold characters other than letters, digits, _=,.- and spaces")
        }
        var archive = CPIOArchive()
        func addDirectory(_ path: String) throws { try archive.addWithParents(path, .directory, mode: 0o755) }
        func addFile(_ path: String, _ bytes: [UInt8], mode: UInt32, time: UInt32 = 0) throws {
            try archive.addWithParents(path, .file(bytes), mode: mode, modificationTime: time)
        }
        for directory in ["bin", "dev", "proc", "sys", "tmp", "root", "lab/bin", Self.moduleDirectory] { try addDirectory(directory) }
        try archive.add("dev/console", .characterDevice(major: 5, minor: 1), mode: 0o600)
        let busyboxBytes = try readBytes(busybox)
        guard busyboxBytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else { throw LabError("\(busybox) is not an ELF executable (install busybox-static)") }
        try addFile("bin/busybox", busyboxBytes, mode: 0o755)
        try archive.add("bin/sh", .symlink(target: "busybox"), mode: 0o777)
        try addFile("bin/kestrel", try readBytes(kestrel), mode: 0o755)
        for module in Set(kernel.amdModules + kernel.intelModules + (kernel.hostModules ?? [])).sorted() {
            try addFile("\(Self.moduleDirectory)/\(module).ko", try readBytes(kernel.modulePath(module)), mode: 0o644)
        }
        if case .script(let text) = command {
            try addFile("lab/command", Array((text + "\n").utf8), mode: 0o755)
        }
        for file in files {
            let bytes: [UInt8]
            switch file.source {
            case .host(let path): bytes = try readBytes(path)
            case .bytes(let contents): bytes = contents
            }
            try addFile(file.guestPath, bytes, mode: file.mode, time: file.modificationTime)
        }
        try addFile("init", Array(initScript().utf8), mode: 0o755)
        return archive.finished()
    }
}
