import GuestMemory
import KVM

/// The NUMA cases of the kernel's guest_memfd_test.c: memory policies on a
/// guest_memfd mapping (mbind/get_mempolicy), and that pages are allocated on
/// the node the policy names (move_pages in query mode). Both need two NUMA
/// nodes; `kestrel lab --numa-nodes 2` gives an L1 that has them.
extension GuestMemfdSuite {
    static func requireTwoNodes(_ context: TestContext) throws {
        let nodes = NUMAPolicy.nodes()
        guard nodes.contains(0) && nodes.contains(1) else {
            try context.skip("this host has NUMA nodes \(nodes.map(String.init).joined(separator: ", ")); the test needs nodes 0 and 1")
        }
    }

    static func page(_ mapping: MemoryMapping, _ index: Int) -> UnsafeMutableRawPointer {
        mapping.baseAddress + index * pageSize
    }

    static func mbind(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        try requireTwoNodes(context)
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let mapping = try MemoryMapping(fileDescriptor: memfd.fileDescriptor, size: totalSize, sharing: .shared)
        let steps: [(String, Int, Int32, UInt)] = [
            ("pages 0-1 interleaved on node 0", 0, NUMAPolicy.modeInterleave, 0x1),
            ("pages 2-3 bound to node 0", 2, NUMAPolicy.modeBind, 0x1),
        ]
        for (what, first, mode, mask) in steps {
            try NUMAPolicy.bind(page(mapping, first), length: 2 * pageSize, mode: mode, mask: mask)
            let policy = try NUMAPolicy.policy(at: page(mapping, first))
            try context.expect(policy.mode == mode && policy.mask == mask,
                               "get_mempolicy after mbind of \(what): mode \(policy.mode), nodes 0x\(String(policy.mask, radix: 16))")
        }
        try NUMAPolicy.bind(mapping.baseAddress, length: totalSize, mode: NUMAPolicy.modeDefault, mask: 0)
        let reset = try NUMAPolicy.policy(at: mapping.baseAddress)
        try context.expect(reset.mode == NUMAPolicy.modeDefault && reset.mask == 0,
                           "get_mempolicy after MPOL_DEFAULT: mode \(reset.mode), nodes 0x\(String(reset.mask, radix: 16))")
        try context.expectErrno(.invalidArgument, "mbind with mode 999") {
            try NUMAPolicy.bind(mapping.baseAddress, length: pageSize, mode: 999, mask: 0x1)
        }
    }

    static func numaAllocation(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        try requireTwoNodes(context)
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let mapping = try MemoryMapping(fileDescriptor: memfd.fileDescriptor, size: totalSize, sharing: .shared)
        let pages = (0..<4).map { page(mapping, $0) }
        let punch: FileSpace.Mode = [.keepSize, .punchHole]
        // A page allocated under one policy and punched must not stay where it was.
        try expectFill(context, UnsafeMutableRawBufferPointer(start: pages[0], count: pageSize), 0xAA, "filling page 0")
        try NUMAPolicy.bind(pages[0], length: pageSize, mode: NUMAPolicy.modeBind, mask: 0x1)
        try FileSpace.allocate(memfd.fileDescriptor, mode: punch, offset: 0, length: pageSize)
        for (firstHalf, secondHalf) in [(UInt(0x2), UInt(0x1)), (UInt(0x1), UInt(0x2))] {
            try NUMAPolicy.bind(pages[0], length: 2 * pageSize, mode: NUMAPolicy.modeBind, mask: firstHalf)
            try NUMAPolicy.bind(pages[2], length: 2 * pageSize, mode: NUMAPolicy.modeBind, mask: secondHalf)
            try expectFill(context, mapping.bytes, 0xAA, "filling the mapping")
            let expected: [Int32] = [firstHalf, firstHalf, secondHalf, secondHalf].map { $0 == 0x1 ? 0 : 1 }
            let nodes = try NUMAPolicy.nodes(of: pages)
            try context.expectEqual(nodes, expected, "nodes of the four pages (move_pages) after binding pages 0-1 and 2-3")
            try FileSpace.allocate(memfd.fileDescriptor, mode: punch, offset: 0, length: totalSize)
        }
    }
}
