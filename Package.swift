// swift-tools-version:6.0
//
// Kestrel: a KVM hypervisor toolkit for Linux.
// Targets form layers and import downwards only (the README's target table):
// CHost <- HostSystem <- GuestMemory <- KVM (with CKVM, which nothing else
// imports) <- X86 <- GuestKit, Confidential, Boot, VMM <- ControlAPI, Conformance, Lab <- kestrel;
// Virtio (devices, no KVM) sits on GuestMemory and HostSystem, under VMM;
// WireFormats (JSON and HTTP/1.x from untrusted bytes) sits under Metadata (the
// guest's MMDS), which sits on Virtio, under VMM; Jail (the jailer) sits on
// HostSystem alone.

import PackageDescription

let swiftSettings: [SwiftSetting] = [
    // Swift 6: strict concurrency checking. vCPU threads, devices and the
    // run control meet across threads; where a type's safety rests on a lock
    // or on one-thread use rather than on the compiler, it says so beside its
    // `@unchecked Sendable`.
    .swiftLanguageMode(.v6),
]

let package = Package(
    name: "Kestrel",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "KVM", targets: ["KVM"]),
        .library(name: "GuestMemory", targets: ["GuestMemory"]),
        .library(name: "X86", targets: ["X86"]),
        .library(name: "GuestKit", targets: ["GuestKit"]),
        .library(name: "Conformance", targets: ["Conformance"]),
        .library(name: "Confidential", targets: ["Confidential"]),
        .executable(name: "kestrel", targets: ["Kestrel"]),
        .executable(name: "kestrel-bench", targets: ["KestrelBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // Host system calls Swift cannot make directly (fallocate, malloc_trim, OFD
        // locks, mbind and friends, the vCPU kick signal's handler, SIGBUS-guarded
        // access), in C, and their Swift API with the one error type for failed calls.
        .target(name: "CHost"),
        .target(
            name: "HostSystem",
            dependencies: ["CHost", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings),
        // Our own C definitions of the KVM ABI (the distribution headers are too old)
        // and the ioctl shim. Only the KVM target imports it.
        .target(name: "CKVM"),
        .target(
            name: "KVM",
            dependencies: ["CKVM", "HostSystem", "GuestMemory", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings),
        .target(
            name: "GuestMemory",
            dependencies: ["HostSystem", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings),
        .target(name: "X86", dependencies: ["KVM"], swiftSettings: swiftSettings),
        // Fixed-decimal and padded text for reports, without Foundation.
        .target(name: "TextFormat", swiftSettings: swiftSettings),
        .target(
            name: "GuestKit",
            dependencies: ["HostSystem", "KVM", "GuestMemory", "X86"],
            swiftSettings: swiftSettings),
        .target(
            name: "Conformance",
            dependencies: ["HostSystem", "KVM", "GuestMemory", "X86", "GuestKit", "TextFormat", "Confidential", "Virtio"],
            swiftSettings: swiftSettings),
        // Confidential guests: SNP certificate tables, the certificate service, SNP launch.
        .target(
            name: "Confidential",
            dependencies: ["HostSystem", "KVM", "GuestMemory", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings),
        // Operator tools around confidential guests (X.509 summaries of certificate blobs).
        .target(
            name: "ConfidentialTools",
            dependencies: [
                "Confidential",
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings),
        // Host-side decompression of kernel payloads: our own LZ4 decoder, and
        // zlib, liblzma and libzstd from Debian (zlib1g-dev, liblzma-dev, libzstd-dev).
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CLZMA", pkgConfig: "liblzma", providers: [.apt(["liblzma-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .target(name: "Decompression", dependencies: ["CZlib", "CLZMA", "CZstd"], swiftSettings: swiftSettings),
        // Linux boot: bzImage and ELF loaders, zero page, PVH start info, e820, ACPI tables.
        .target(name: "Boot", dependencies: ["GuestMemory", "Decompression"], swiftSettings: swiftSettings),
        // The VMM: machine, devices, CPU templates, run loop.
        // Virtio devices and the virtio-mmio transport, with no KVM in them: the
        // tests play the driver in guest memory.
        // liburing (Debian's liburing-dev, linked statically into kestrel) for the
        // drives' io_engine Async, behind an opaque C face.
        .target(name: "CURing", linkerSettings: [.linkedLibrary("uring")]),
        .target(name: "Virtio", dependencies: ["HostSystem", "GuestMemory", "CURing"], swiftSettings: swiftSettings),
        // JSON documents and HTTP/1.x requests read from untrusted bytes: the
        // API's clients, configuration files and the guest's MMDS requests.
        .target(name: "WireFormats", swiftSettings: swiftSettings),
        // Firecracker's microVM metadata service: the data store, V2 session
        // tokens, and the small ARP/IPv4/TCP stack a virtio-net device hands
        // the guest's MMDS frames to.
        .target(name: "Metadata", dependencies: ["WireFormats", "Virtio", "HostSystem"], swiftSettings: swiftSettings),
        .target(name: "VMM", dependencies: ["HostSystem", "KVM", "GuestMemory", "X86", "Boot", "Virtio", "Confidential", "WireFormats", "Metadata"], swiftSettings: swiftSettings),
        // Firecracker's REST API on a Unix socket: the HTTP/1.1 reader, the
        // routes over the VMM's configuration, and the API thread.
        .target(name: "ControlAPI", dependencies: ["VMM", "Virtio", "HostSystem", "WireFormats", "Metadata"], swiftSettings: swiftSettings),
        // Firecracker's jailer for Kestrel (or Firecracker): chroot, device
        // nodes, cgroups, namespaces, limits, dropped privileges, exec.
        .target(name: "Jail", dependencies: ["HostSystem", "CHost"], swiftSettings: swiftSettings),
        // The lab: L1 KVM hosts under QEMU, Debian kernels fetched and cached, the
        // L1 initramfs, conformance matrices across hosts.
        .target(name: "Lab", dependencies: ["Boot", "Decompression", "TextFormat"], swiftSettings: swiftSettings),
        // Fuzz and load machinery shared by the tests and kestrel-bench (not a product).
        .target(name: "KestrelTesting", dependencies: ["Confidential"], swiftSettings: swiftSettings),
        .executableTarget(
            name: "Kestrel",
            dependencies: [
                "HostSystem", "KVM", "X86", "Conformance", "Confidential", "ConfidentialTools", "Boot", "Decompression", "VMM", "ControlAPI", "Lab", "TextFormat", "Jail",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            exclude: ["link-symbol-order.txt"],
            swiftSettings: swiftSettings,
            // One static executable: nothing to install beside it, and only the pages
            // it uses are resident (shared libraries bring whole 64 KiB fault-around
            // windows and relocations). FoundationEssentials' own dependencies are
            // not in the toolchain's static link list, so they are named here.
            // Linked by the toolchain's lld, which gathers the symbols that
            // link-symbol-order.txt names (scripts/symbol-order says why).
            linkerSettings: [.unsafeFlags([
                "-static-executable", "-l_FoundationCShims", "-l_FoundationCollections", "-lswiftSynchronization",
                "-use-ld=lld", "-Xlinker", "--symbol-ordering-file=\(Context.packageDirectory)/Sources/Kestrel/link-symbol-order.txt",
                "-Xlinker", "--no-warn-symbol-ordering",
            ])]),
        // The C baseline for the exit round-trip benchmark.
        .target(name: "CBenchLoop"),
        .executableTarget(
            name: "KestrelBench",
            dependencies: ["KVM", "GuestMemory", "GuestKit", "CBenchLoop", "Confidential", "KestrelTesting"],
            swiftSettings: swiftSettings),
        .testTarget(name: "HostSystemTests", dependencies: ["HostSystem"], swiftSettings: swiftSettings),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "CKVM"], swiftSettings: swiftSettings),
        .testTarget(
            name: "GuestMemoryTests", dependencies: ["GuestMemory", "HostSystem"], swiftSettings: swiftSettings),
        .testTarget(name: "X86Tests", dependencies: ["X86"], swiftSettings: swiftSettings),
        .testTarget(
            name: "GuestKitTests", dependencies: ["GuestKit"], swiftSettings: swiftSettings),
        .testTarget(
            name: "ConformanceTests", dependencies: ["Conformance"], swiftSettings: swiftSettings),
        .testTarget(name: "LabTests", dependencies: ["Lab", "Boot", "TextFormat"], swiftSettings: swiftSettings),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "GuestMemory", "HostSystem"], swiftSettings: swiftSettings),
        .testTarget(name: "JailTests", dependencies: ["Jail", "HostSystem"], swiftSettings: swiftSettings),
        .testTarget(name: "MetadataTests", dependencies: ["Metadata", "WireFormats", "Virtio", "GuestMemory", "HostSystem"], swiftSettings: swiftSettings),
        .testTarget(name: "ControlAPITests", dependencies: ["ControlAPI", "VMM", "HostSystem", "Lab"], swiftSettings: swiftSettings),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "KVM", "HostSystem", "Boot", "Confidential", "GuestMemory", "KestrelTesting"], swiftSettings: swiftSettings),
        .testTarget(
            name: "BootTests", dependencies: ["Boot", "Decompression", "GuestMemory", "CZlib", "CLZMA", "CZstd"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "ConfidentialTests",
            dependencies: [
                "Confidential", "ConfidentialTools", "KestrelTesting", "KVM", "GuestMemory",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ], swiftSettings: swiftSettings),
    ]
)
