#!/usr/bin/env python3
"""Lists the files that scripts/firecracker-client.py needs, so that the lab
can run it, with firecracker-python unchanged, inside an L1 that has no
Python of its own.

Run it with the venv's interpreter (~/.cache/kestrel/firecracker-python/bin/
python). It drives every mode of the client against a small Firecracker-like
server on a Unix socket in this process (answers 200 with JSON, 204, and 400
with a fault_message), so that modules the client imports only while it
talks are loaded too. Then it prints one `HOST:GUEST` line per file, the
format of `kestrel lab run --add-list`:

- the interpreter, at the venv's bin/python, and pyvenv.cfg;
- the source and the compiled file (__pycache__) of every module loaded;
- every extension module, and the shared libraries ldd names for it and for
  the interpreter, at the paths ldd names;
- the files that the interpreter looks for to find its prefix;
- every other file Python code opened while the client ran, and certifi's
  CA bundle (requests loads it when it is imported).

Every file keeps its host path, so the L1's Python resolves everything as
this one does. Exits non-zero, naming the step, when a mode of the client
fails against the server.
"""
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler
from socketserver import ThreadingMixIn, UnixStreamServer

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "firecracker-client.py")

# Every file Python code opens from here on (data files such as a package's
# tables); C libraries' own opens are not audited, so certifi's bundle,
# which requests hands to OpenSSL at import, is added by name below.
OPENED = set()


def audit(event, arguments):
    if event == "open" and isinstance(arguments[0], str) and os.path.isabs(arguments[0]):
        OPENED.add(arguments[0])


sys.addaudithook(audit)


class Handler(BaseHTTPRequestHandler):
    """Answers like Firecracker: GET with a JSON document, PUT and PATCH with
    204, and a PUT to /drives or a snapshot while running with a 400 fault."""

    protocol_version = "HTTP/1.1"

    def address_string(self):
        return "unix"

    def log_message(self, *_):
        pass

    def answer(self, status, document=None):
        body = json.dumps(document).encode() if document is not None else b""
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(200, {"app_name": "Kestrel", "id": "anonymous-instance", "state": "Running", "vmm_version": "0",
                          "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}})

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/drives") or self.path.startswith("/logger"):
            return self.answer(400, {"fault_message": "refused by the stand-in server"})
        self.answer(204)

    do_PATCH = do_PUT


class Server(ThreadingMixIn, UnixStreamServer):
    daemon_threads = True


def exercise(directory):
    """Runs the client's modes against the stand-in server; returns nothing,
    raises on a failed mode."""
    path = os.path.join(directory, "api.sock")
    server = Server(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = importlib.util.spec_from_file_location("firecracker_client", CLIENT)
    client = importlib.util.module_from_spec(spec)
    with redirect_stdout(io.StringIO()):  # firecracker's warning that it has no firecracker binary
        spec.loader.exec_module(client)
    modes = [[path, "/kernel"], [path, "/kernel", "snapshot", "/s", "/m"], [path, "-", "load", "/s", "/m"],
             [path, "/kernel", "--initrd", "/i", "--boot-args", "console=ttyS0", "--mem-mib", "256",
              "--drive", "data:/d.img", "--vsock", "3:/v.sock", "snapshot", "/s", "/m"],
             [path, "-", "load", "/s", "/m", "--ctrl-alt-del"]]
    for arguments in modes:
        sys.argv = [CLIENT] + arguments
        sys.stdin = io.StringIO("\n\n\n")
        output = io.StringIO()
        with redirect_stdout(output):
            client.main()
        if "fault" not in output.getvalue() and arguments[1] == "/kernel" and len(arguments) == 2:
            raise SystemExit(f"the stand-in server's faults did not reach the client: {output.getvalue()}")
    server.shutdown()
    # An HTTP exchange over a real socket pair, so that the socket module's
    # lazily imported parts are loaded as the L1 will need them.
    socket.socketpair()[0].close()


def libraries(path):
    """The absolute paths ldd names for `path`."""
    listing = subprocess.run(["ldd", path], capture_output=True, text=True)
    if listing.returncode != 0:
        return []
    found = []
    for line in listing.stdout.splitlines():
        words = line.split()
        found += [word for word in words if word.startswith("/")][:1]
    return found


def main():
    with tempfile.TemporaryDirectory(prefix="kestrel-fcfiles") as directory:
        exercise(directory)
    directory = os.path.realpath(directory)
    files = {}

    def add(host, guest=None):
        guest = guest or host
        if os.path.isfile(host):
            files.setdefault(guest, os.path.realpath(host))

    add(os.path.realpath(sys.executable), sys.executable)
    add(os.path.join(sys.prefix, "pyvenv.cfg"))
    stdlib = os.path.join(sys.base_prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}")
    add(os.path.join(stdlib, "os.py"))  # the interpreter's landmark for its prefix
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
    for path in sorted(OPENED):
        if not path.startswith(directory) and not path.startswith("/proc/") and not path.startswith("/dev/"):
            add(path)
    if "certifi" in sys.modules:
        add(sys.modules["certifi"].where())
    add(CLIENT, "/lab/firecracker-client.py")
    for library in shared:
        add(library)
    for guest in sorted(files):
        print(f"{files[guest]}:{guest}")


if __name__ == "__main__":
    main()
