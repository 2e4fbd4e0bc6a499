#!/usr/bin/env python3
"""A page-fault handler for `mem_backend: {"backend_type": "Uffd"}` loads.

Written from Firecracker's documentation alone
(docs/snapshotting/handling-page-faults-on-snapshot-resume.md), with no
Kestrel code: it is the proof that a handler made for Firecracker serves
Kestrel unchanged, and an example to start from.

    uffd-handler.py SOCKET MEMORY_FILE

It listens on SOCKET, takes one connection, and reads the one message the
VMM sends there: a JSON array of regions (base_host_virt_addr, size,
offset, page_size) with the userfaultfd attached (SCM_RIGHTS). Then it
serves the userfaultfd: a page fault gets the memory file's page at the
region's offset (UFFDIO_COPY); a remove event (a balloon's MADV_DONTNEED)
makes the pages it names zero from then on (UFFDIO_ZEROPAGE at their next
fault). It ends when the VMM closes the connection or the userfaultfd
hangs up, and prints what it served to standard error.
"""

import ctypes
import fcntl
import json
import os
import select
import socket
import struct
import sys

# <linux/userfaultfd.h>: _IOWR/_IOR(0xAA, nr, struct) and the event codes.
UFFDIO_WAKE = 0x8010AA02      # _IOR(0xAA, 0x02, struct uffdio_range)
UFFDIO_COPY = 0xC028AA03      # _IOWR(0xAA, 0x03, struct uffdio_copy)
UFFDIO_ZEROPAGE = 0xC020AA04  # _IOWR(0xAA, 0x04, struct uffdio_zeropage)
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_REMOVE = 0x15
UFFD_MSG_SIZE = 32


def map_read_only(fd, size):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    address = libc.mmap(None, size, 0x1, 0x02, fd, 0)  # PROT_READ, MAP_PRIVATE
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap of the memory file")
    return address


def receive_handshake(connection):
    space = socket.CMSG_SPACE(struct.calcsize("i"))
    data, ancillary, _, _ = connection.recvmsg(65536, space)
    descriptors = [struct.unpack("i", cdata[:4])[0] for level, kind, cdata in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS]
    if not descriptors:
        raise SystemExit("uffd-handler: the message came without a userfaultfd")
    return json.loads(data.decode()), descriptors[0]


class Handler:
    def __init__(self, regions, uffd, memory_address, memory_size):
        self.regions = regions
        self.uffd = uffd
        self.memory_address = memory_address
        self.memory_size = memory_size
        self.removed = []  # [start, end) host ranges that read zero now
        self.copied = self.zeroed = self.removes = 0

    def region_of(self, address):
        for region in self.regions:
            if region["base_host_virt_addr"] <= address < region["base_host_virt_addr"] + region["size"]:
                return region
        raise SystemExit("uffd-handler: a fault at 0x%x lies in no region" % address)

    def fill(self, request, struct_format, values, wake_address, page):
        buffer = bytearray(struct.pack(struct_format, *values))
        try:
            fcntl.ioctl(self.uffd, request, buffer)
        except OSError as error:
            if error.errno == 17:  # EEXIST: already there; wake whoever waits
                fcntl.ioctl(self.uffd, UFFDIO_WAKE, bytearray(struct.pack("QQ", wake_address, page)))
            elif error.errno == 11:  # EAGAIN: a remove event is pending; read it first
                return False
            else:
                raise
        return True

    def serve_fault(self, address):
        region = self.region_of(address)
        page = region["page_size"]
        start = address & ~(page - 1)
        if any(low <= start < high for low, high in self.removed):
            done = self.fill(UFFDIO_ZEROPAGE, "QQQq", (start, page, 0, 0), start, page)
            self.zeroed += done
            return done
        offset = region["offset"] + (start - region["base_host_virt_addr"])
        if offset + page > self.memory_size:
            raise SystemExit("uffd-handler: the memory file ends before offset %d" % (offset + page))
        done = self.fill(UFFDIO_COPY, "QQQQq", (start, self.memory_address + offset, page, 0, 0), start, page)
        self.copied += done
        return done

    def serve(self, connection):
        pending = []
        poller = select.poll()
        poller.register(self.uffd, select.POLLIN)
        poller.register(connection.fileno(), select.POLLIN)
        while True:
            # A fault that met EAGAIN waits for the remove event behind it: poll briefly, then try it again.
            for fd, events in poller.poll(10 if pending else None):
                if fd == connection.fileno() and not connection.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK):
                    return
                if fd == self.uffd and events & (select.POLLHUP | select.POLLERR):
                    return
            while True:
                try:
                    message = os.read(self.uffd, UFFD_MSG_SIZE)
                except BlockingIOError:
                    break
                event = message[0]
                if event == UFFD_EVENT_PAGEFAULT:
                    pending.append(struct.unpack_from("Q", message, 16)[0])
                elif event == UFFD_EVENT_REMOVE:
                    start, end = struct.unpack_from("QQ", message, 8)
                    self.removed.append((start, end))
                    self.removes += 1
            pending = [address for address in pending if not self.serve_fault(address)]


def list_files():
    """Prints the files this script needs to run elsewhere, one HOST:GUEST
    line each (the format of `kestrel lab run --add-list`): the interpreter,
    every module loaded (source, compiled file, extension), the shared
    libraries ldd names for the interpreter and the extensions, and the
    script itself at /lab/uffd-handler.py. Every file keeps its host path."""
    import importlib.util
    import subprocess

    def libraries(path):
        listing = subprocess.run(["ldd", path], capture_output=True, text=True)
        return [word for line in listing.stdout.splitlines() for word in line.split() if word.startswith("/")][:64]

    files = {}

    def add(host, guest=None):
        if os.path.isfile(host):
            files.setdefault(guest or host, os.path.realpath(host))

    add(os.path.realpath(sys.executable), sys.executable)
    shared = libraries(os.path.realpath(sys.executable))
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not os.path.isabs(path) or getattr(module, "__name__", "") == "__main__":
            continue
        add(path)
        if path.endswith(".py"):
            add(importlib.util.cache_from_source(path))
        elif path.endswith(".so"):
            shared += libraries(path)
    for library in shared:
        add(library)
    add(os.path.abspath(__file__), "/lab/uffd-handler.py")
    for guest in sorted(files):
        print(f"{files[guest]}:{guest}")


def main():
    if sys.argv[1:] == ["--list-files"]:
        return list_files()
    if len(sys.argv) != 3:
        raise SystemExit("usage: uffd-handler.py SOCKET MEMORY_FILE  (or --list-files)")
    socket_path, memory_path = sys.argv[1], sys.argv[2]
    memory_fd = os.open(memory_path, os.O_RDONLY)
    memory_size = os.fstat(memory_fd).st_size
    memory_address = map_read_only(memory_fd, memory_size)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    listener.bind(socket_path)
    listener.listen(1)
    print("uffd-handler: listening on %s for %s (%d bytes)" % (socket_path, memory_path, memory_size), file=sys.stderr, flush=True)
    connection, _ = listener.accept()
    regions, uffd = receive_handshake(connection)
    total = sum(region["size"] for region in regions)
    if total != memory_size:
        raise SystemExit("uffd-handler: the regions hold %d bytes, the memory file %d" % (total, memory_size))
    os.set_blocking(uffd, False)
    handler = Handler(regions, uffd, memory_address, memory_size)
    print("uffd-handler: %d regions, %d bytes; serving" % (len(regions), total), file=sys.stderr, flush=True)
    handler.serve(connection)
    print("uffd-handler: done: %d pages copied, %d zero pages, %d remove events"
          % (handler.copied, handler.zeroed, handler.removes), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
