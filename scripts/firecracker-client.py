#!/usr/bin/env python3
"""Drives a Kestrel VMM through Firecracker's API with firecracker-python
(PyPI), a client written for Firecracker, unchanged: its `Api` class and
`Resource` methods. The tests run it from the venv that scripts/prepare-host
makes (~/.cache/kestrel/firecracker-python).

Usage: firecracker-client.py SOCKET KERNEL [OPTIONS]
       firecracker-client.py SOCKET KERNEL [OPTIONS] snapshot STATE MEMORY
       firecracker-client.py SOCKET - load STATE MEMORY [--ctrl-alt-del]
The first boots, pauses (waiting for a line on stdin), resumes and reads the
configuration; `snapshot` boots, waits for a line on stdin, is refused a
snapshot while running, pauses and writes a full snapshot; `load` restores
one into a fresh VMM and resumes it, and with --ctrl-alt-del waits for a
line on stdin and sends SendCtrlAltDel. Options for the boot: --initrd PATH,
--boot-args TEXT, --mem-mib N, --drive ID:PATH (repeatable) and
--vsock CID:UDS_PATH. Prints one line per step: "<step> <result>" where
result is ok, the JSON answer, or "fault <message>" for an APIError.
"""
import argparse
import sys

from firecracker.api import Api, Resource
from firecracker.exceptions import APIError


def step(name, call):
    try:
        response = call()
        body = response.text.strip() if response is not None and response.text else ""
        print(f"{name} {body or 'ok'}", flush=True)
    except APIError as error:
        print(f"{name} fault {error}", flush=True)


def configure(api, options):
    """The boot source, the machine, the drives and vsock, then InstanceStart."""
    boot = {"kernel_image_path": options.kernel, "boot_args": options.boot_args}
    if options.initrd:
        boot["initrd_path"] = options.initrd
    step("boot", lambda: api.boot.put(**boot))
    step("machine", lambda: api.machine_config.put(vcpu_count=1, mem_size_mib=options.mem_mib, smt=False, track_dirty_pages=False))
    for drive in options.drive:
        identifier, path = drive.split(":", 1)
        step(f"drive-{identifier}", lambda: api.drive.put(drive_id=identifier, path_on_host=path, is_root_device=False, is_read_only=False))
    if options.vsock:
        cid, path = options.vsock.split(":", 1)
        step("vsock", lambda: api.vsock.put(guest_cid=int(cid), uds_path=path))
    step("start", lambda: api.actions.put(action_type="InstanceStart"))


def snapshot(api, options):
    configure(api, options)
    sys.stdin.readline()  # the caller waits for the guest's first lines
    step("running-snapshot", lambda: api.create_snapshot.put(snapshot_type="Full", snapshot_path=options.state, mem_file_path=options.memory))
    step("pause", lambda: api.vm.patch(state="Paused"))
    step("paused", api.describe.get)
    step("snapshot", lambda: api.create_snapshot.put(snapshot_type="Full", snapshot_path=options.state, mem_file_path=options.memory))


def load(api, options):
    step("fresh", api.describe.get)
    step("load", lambda: api.load_snapshot.put(snapshot_path=options.state,
                                               mem_backend={"backend_type": "File", "backend_path": options.memory}, resume_vm=True))
    step("restored", api.describe.get)
    step("config", lambda: api.vm_config.get())
    if options.ctrl_alt_del:
        sys.stdin.readline()  # the caller waits for the restored guest's work
        step("ctrl-alt-del", lambda: api.actions.put(action_type="SendCtrlAltDel"))


def boot_pause_resume(api, options):
    step("describe", api.describe.get)
    step("boot", lambda: api.boot.put(kernel_image_path=options.kernel, boot_args=options.boot_args))
    step("machine", lambda: api.machine_config.put(vcpu_count=1, mem_size_mib=options.mem_mib, smt=False, track_dirty_pages=False))
    step("bad-drive", lambda: api.drive.put(drive_id="rootfs", path_on_host="/nonexistent.img", is_root_device=True, is_read_only=False))
    # The log and metrics beside the socket; the metadata store, as a client fills it.
    step("logger", lambda: api.logger.put(log_path=options.socket + ".log", level="Info", show_level=True))
    step("metrics", lambda: Resource(api, "/metrics").put(metrics_path=options.socket + ".metrics"))
    step("mmds", lambda: api.mmds.put(latest={"meta-data": {"instance-id": "i-kestrel"}}))
    step("start", lambda: api.actions.put(action_type="InstanceStart"))
    step("mmds-patch", lambda: api.mmds.patch(latest={"meta-data": {"note": "patched"}}))
    step("mmds-get", lambda: api.mmds.get())
    step("flush", lambda: api.actions.put(action_type="FlushMetrics"))
    step("running", lambda: api.describe.get())
    step("pause", lambda: api.vm.patch(state="Paused"))
    step("paused", lambda: api.describe.get())
    # The caller reads the guest's output here, then writes a line to go on.
    sys.stdin.readline()
    step("late-machine", lambda: api.machine_config.put(vcpu_count=2, mem_size_mib=options.mem_mib))
    step("resume", lambda: api.vm.patch(state="Resumed"))
    step("config", lambda: api.vm_config.get())
    step("version", lambda: api.version.get())


def main():
    parser = argparse.ArgumentParser(description="Drives a VMM through Firecracker's API with firecracker-python.")
    parser.add_argument("socket")
    parser.add_argument("kernel")
    parser.add_argument("mode", nargs="?", choices=["snapshot", "load"])
    parser.add_argument("state", nargs="?")
    parser.add_argument("memory", nargs="?")
    parser.add_argument("--initrd")
    parser.add_argument("--boot-args", default="console=ttyS0")
    parser.add_argument("--mem-mib", type=int, default=64)
    parser.add_argument("--drive", action="append", default=[])
    parser.add_argument("--vsock")
    parser.add_argument("--ctrl-alt-del", action="store_true")
    options = parser.parse_intermixed_args()
    if options.mode and not (options.state and options.memory):
        parser.error(f"{options.mode} needs STATE and MEMORY")
    api = Api(options.socket)
    {"snapshot": snapshot, "load": load, None: boot_pause_resume}[options.mode](api, options)


if __name__ == "__main__":
    main()
