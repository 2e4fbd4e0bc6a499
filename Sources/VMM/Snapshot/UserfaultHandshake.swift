import Glibc
import GuestMemory
import HostSystem

/// A restore with `mem_backend: {"backend_type": "Uffd", "backend_path": SOCKET}`,
/// as Firecracker does it (docs/snapshotting/handling-page-faults-on-snapshot-resume.md):
/// guest RAM is anonymous memory registered with a userfaultfd in missing
/// mode (UFFD_FEATURE_EVENT_REMOVE asked for, for a balloon's discards),
/// and one sendmsg on a connection to SOCKET carries the userfaultfd
/// (SCM_RIGHTS) and the regions' layout as JSON, an array of
/// `{"base_host_virt_addr", "size", "offset", "page_size", "page_size_kib"}`
/// (offset: where the region's bytes start in the memory file; page_size_kib
/// is Firecracker's deprecated copy of page_size, in bytes despite its name).
/// Nothing else is ever said on the socket. The handler fills every page;
/// if it goes away, a vCPU that touches a missing page waits for ever, as in
/// Firecracker. Kestrel keeps its own copy of the userfaultfd and the
/// connection until the machine ends, so that neither closes under the handler.
final class UserfaultHandlerConnection: LazyRAMFiller, @unchecked Sendable {
    // @unchecked: both descriptors are set once; `stop` runs once, at the end.
    let userfault: Userfault
    private let socket: Int32

    /// The JSON Firecracker sends: one object per region, in guest address order.
    static func mappingsJSON(_ regions: [(hostAddress: UInt, size: Int, fileOffset: UInt64)], pageSize: Int) -> String {
        "[" + regions.map { region in
            #"{"base_host_virt_addr":\#(region.hostAddress),"size":\#(region.size),"offset":\#(region.fileOffset),"#
                + #""page_size":\#(pageSize),"page_size_kib":\#(pageSize)}"#
        }.joined(separator: ",") + "]"
    }

    /// Registers `regions` with a new userfaultfd and hands it and their
    /// layout to the handler listening at `socketPath`.
    init(socketPath: String, regions: [(hostAddress: UInt, size: Int, fileOffset: UInt64)]) throws {
        let userfault: Userfault
        do { userfault = try Userfault(features: Userfault.eventRemove) } catch {
            throw SnapshotError("mem_backend Uffd: cannot open a userfaultfd: \(error)"
                + " (a process without CAP_SYS_PTRACE needs /dev/userfaultfd access or vm.unprivileged_userfaultfd = 1)")
        }
        for region in regions {
            do { try userfault.registerMissing(start: region.hostAddress, length: region.size) } catch {
                throw SnapshotError("mem_backend Uffd: \(error)")
            }
        }
        let socket: Int32
        do { socket = try UnixSocket.connect(to: socketPath) } catch {
            throw SnapshotError("mem_backend Uffd: cannot reach the page-fault handler at \(socketPath): \(error)")
        }
        do {
            try UnixSocket.send(Array(Self.mappingsJSON(regions, pageSize: MemoryMapping.pageSize).utf8),
                                descriptor: userfault.fileDescriptor, on: socket)
        } catch {
            close(socket)
            throw SnapshotError("mem_backend Uffd: cannot send the userfaultfd to the page-fault handler at \(socketPath): \(error)")
        }
        self.userfault = userfault
        self.socket = socket
    }

    /// Nothing of Kestrel's runs for the handler.
    func confine(_ seccomp: SeccompPolicy) {}

    func stop() {}

    /// The handler's failures are its own to report (Firecracker's caveat).
    func onFailure(_ handler: @escaping @Sendable (String) -> Void) {}

    deinit { close(socket) }
}
