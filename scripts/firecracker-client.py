#!/usr/bin/env python3
"""Drives a Kestrel VMM through Firecracker's API with firecracker-python
(PyPI), a client written for Firecracker, unchanged: its `Api` class and
`Resource` methods. The tests run it from the venv that scripts/prepare-host
makes (~/.cache/kestrel/firecracker-python).

Usage: firecracker-client.py SOCKET KERNEL
       firecracker-client.py SOCKET KERNEL snapshot STATE MEMORY
       firecracker-client.py SOCKET - load STATE MEMORY
The first boots, pauses (waiting for a line on stdin), resumes and reads the
configuration; `snapshot` boots, pauses and writes a full snapshot; `load`
restores one into a fresh VMM and resumes it. Prints one line per step:
"<step> <result>" where result is ok, the JSON answer, or "fault <message>"
for an APIError.
"""
import json
import sys

from firecracker.api import Api
from firecracker.exceptions import APIError


def step(name, call):
    try:
        response = call()
        body = response.text.strip() if response is not None and response.text else ""
        print(f"{name} {body or 'ok'}", flush=True)
    except APIError as error:
        print(f"{name} fault {error}", flush=True)


def snapshot(api, kernel, state, memory):
    step("boot", lambda: api.boot.put(kernel_image_path=kernel, boot_args="console=ttyS0"))
    step("machine", lambda: api.machine_config.put(vcpu_count=1, mem_size_mib=64, smt=False, track_dirty_pages=False))
    step("start", lambda: api.actions.put(action_type="InstanceStart"))
    sys.stdin.readline()  # the caller waits for the guest's first lines
    step("running-snapshot", lambda: api.create_snapshot.put(snapshot_type="Full", snapshot_path=state, mem_file_path=memory))
    step("pause", lambda: api.vm.patch(state="Paused"))
    step("snapshot", lambda: api.create_snapshot.put(snapshot_type="Full", snapshot_path=state, mem_file_path=memory))


def load(api, state, memory):
    step("fresh", api.describe.get)
    step("load", lambda: api.load_snapshot.put(snapshot_path=state, mem_backend={"backend_type": "File", "backend_path": memory},
                                               resume_vm=True))
    step("restored", api.describe.get)
    step("config", lambda: api.vm_config.get())


def main():
    socket, kernel = sys.argv[1], sys.argv[2]
    api = Api(socket)
    if len(sys.argv) == 6 and sys.argv[3] == "snapshot":
        return snapshot(api, kernel, sys.argv[4], sys.argv[5])
    if len(sys.argv) == 6 and sys.argv[3] == "load":
        return load(api, sys.argv[4], sys.argv[5])
    step("describe", api.describe.get)
    step("boot", lambda: api.boot.put(kernel_image_path=kernel, boot_args="console=ttyS0"))
    step("machine", lambda: api.machine_config.put(vcpu_count=1, mem_size_mib=64, smt=False, track_dirty_pages=False))
    step("bad-drive", lambda: api.drive.put(drive_id="rootfs", path_on_host="/nonexistent.img", is_root_device=True, is_read_only=False))
    step("logger", lambda: api.logger.put(log_path="/tmp/fc.log", level="Info"))
    step("start", lambda: api.actions.put(action_type="InstanceStart"))
    step("running", lambda: api.describe.get())
    step("pause", lambda: api.vm.patch(state="Paused"))
    step("paused", lambda: api.describe.get())
    # The caller reads the guest's output here, then writes a line to go on.
    sys.stdin.readline()
    step("late-machine", lambda: api.machine_config.put(vcpu_count=2, mem_size_mib=64))
    step("resume", lambda: api.vm.patch(state="Resumed"))
    step("config", lambda: api.vm_config.get())
    step("version", lambda: api.version.get())


if __name__ == "__main__":
    main()
