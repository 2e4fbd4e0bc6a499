#!/usr/bin/env python3
"""How Kestrel's API holds up under many clients: GET / from one client, then
from 200 at once, against one `kestrel run --api-sock` in the same run.

The 200 clients poll, as orchestrators do: each sends a GET every --interval
ms (100 by default, 2,000 requests a second in all), starting at random
offsets, so the time per GET shows queueing behind the others rather than
the arithmetic of a saturated queue. With --interval 0 they send back to
back, and a single-threaded server's p99 is then about the client count
times one request's time (Little's law); that run is informative only.

Each request is a fresh Unix-socket connection (as curl and the Firecracker
SDKs make them): connect, send GET /, read the whole answer, close. Past
Kestrel's 16 open connections the API answers 503, as Firecracker does; a
client that gets one tries again after 1 ms, and the request's time runs from
its first attempt, so a 503 costs the client what it would cost a real one.

Prints, for one client and for 200: the median, p99 and maximum time per GET
in microseconds, the 503s, and the ratios of the 200-client p99 to the
one-client median and p99 (issue 36 asks that the p99 stays within 3x of the
one-client time). The same two phases then run against a control: a minimal
asyncio server in its own process answering every request at once, so the
share of the clients' own cost (and of the 2 cores they share) shows. A client starves if it cannot finish its requests within
--deadline seconds; the count of those is printed and makes the exit status 1.

With --native the clients are scripts/api-load.c (built with gcc): one C
process driving every client with epoll, so a GET costs the client a few
system calls instead of a turn of Python's event loop, and what is left of
the ratio is the server's and the machine's. The control is the same asyncio
server either way.

  scripts/api-concurrency-bench.py [--native] [--clients 200] [--requests 20] [--single 1000] [--kestrel PATH]

Needs a release build of kestrel (swift build -c release) unless --kestrel
names another; no /dev/kvm (the machine is never started).
"""
import argparse, asyncio, os, random, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"


async def one_get(socket_path):
    """One GET /: the status and the number of refusals before it (a 503 read,
    or a connection closed before the answer could be read: a server past its
    limit answers 503 and closes at once, and a client whose request then
    meets a closed socket loses the answer)."""
    refused = 0
    while True:
        try:
            return await attempt(socket_path, refused)
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
            RESETS[0] += 1
            refused += 1
            await asyncio.sleep(0.001)


RESETS = [0]


async def attempt(socket_path, refused):
    while True:
        reader, writer = await asyncio.open_unix_connection(socket_path)
        writer.write(REQUEST)
        try:
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            # A server past its connection limit answers 503 and closes at
            # once, so the request may not go out; the answer is still there to read.
            pass
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass
        if status == 503:
            refused += 1
            await asyncio.sleep(0.001)
            continue
        return status, refused


async def client(socket_path, count, times, failures, interval):
    refused = 0
    if interval:
        await asyncio.sleep(random.uniform(0, interval))
    for _ in range(count):
        start = time.perf_counter()
        status, retries = await one_get(socket_path)
        times.append((time.perf_counter() - start) * 1e6)
        refused += retries
        if status != 200:
            failures.append(status)
        if interval:
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))
    return refused


async def run(socket_path, clients, requests, deadline, interval=0.0):
    times, failures = [], []
    tasks = [asyncio.create_task(client(socket_path, requests, times, failures, interval)) for _ in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    refused = sum(task.result() for task in done if not task.exception())
    errors = [task.exception() for task in done if task.exception()]
    return times, refused, len(pending), failures, errors


def summary(times):
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


CONTROL_SERVER = r"""
import asyncio, sys
BODY = b'{"app_name":"control","id":"control","state":"Not started","vmm_version":"0"}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
async def serve(reader, writer):
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_unix_server(serve, sys.argv[1], backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def native_run(socket_path, clients, requests, deadline, interval=0.0):
    """run()'s figures from scripts/api-load.c's clients."""
    result = subprocess.run([NATIVE[0], socket_path, str(clients), str(requests), str(interval * 1000), str(deadline)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=deadline + 30)
    if result.returncode != 0:
        sys.exit(f"api-load failed ({result.returncode}): {result.stderr}")
    times, failures, refused, starved = [], [], 0, 0
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[0] == "t":
            times.append(float(fields[1]))
            if fields[2] != "200":
                failures.append(int(fields[2]))
        elif fields[0] == "refused":
            refused, starved = int(fields[1]), int(fields[5])
            RESETS[0] += int(fields[3])
    return times, refused, starved, failures, []


NATIVE = []


def measure(command, socket_path, args):
    """Starts `command` (which serves `socket_path`), runs both phases, stops it."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if os.path.exists(socket_path):
                break
            time.sleep(0.05)
        else:
            sys.exit(f"api-concurrency-bench: {socket_path} never appeared")
        if NATIVE:
            native_run(socket_path, 1, 50, args.deadline)  # warm-up
            single = native_run(socket_path, 1, args.single, args.deadline)
            loaded = native_run(socket_path, args.clients, args.requests, args.deadline, args.interval / 1000.0)
            return single, loaded
        asyncio.run(run(socket_path, 1, 50, args.deadline))  # warm-up
        single = asyncio.run(run(socket_path, 1, args.single, args.deadline))
        loaded = asyncio.run(run(socket_path, args.clients, args.requests, args.deadline, args.interval / 1000.0))
        return single, loaded
    finally:
        process.terminate()
        process.wait(timeout=10)


def report(name, single, loaded, args):
    (single_times, _, _, single_failures, single_errors), (times, refused, starved, failures, errors) = single, loaded
    if single_errors or errors or single_failures or failures:
        print(f"{name}: errors: {single_errors + errors}, non-200 answers: {single_failures + failures}")
    one = summary(single_times)
    many = summary(times) if times else (0, 0, 0)
    pace = f"every {args.interval:g} ms each" if args.interval else "back to back"
    print(f"{name}: one client, {len(single_times)} GETs: median {one[0]:.0f} us, p99 {one[1]:.0f} us, max {one[2]:.0f} us")
    print(f"{name}: {args.clients} clients ({pace}), {len(times)} GETs: median {many[0]:.0f} us, p99 {many[1]:.0f} us, "
          f"max {many[2]:.0f} us, {refused} refused first ({RESETS[0]} of them closed before the 503 could be read), "
          f"{starved} clients starved")
    RESETS[0] = 0
    print(f"{name}: ratio of the {args.clients}-client p99 to the one-client median {many[1] / one[0]:.2f}, to the one-client p99 {many[1] / one[1]:.2f}")
    return bool(starved or errors or failures)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20, help="GETs per client under load")
    parser.add_argument("--single", type=int, default=1000, help="GETs from the lone client")
    parser.add_argument("--interval", type=float, default=100.0, help="ms between one client's GETs under load (0: back to back)")
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--kestrel", default=os.path.join(ROOT, ".build", "release", "kestrel"))
    parser.add_argument("--no-control", action="store_true", help="skip the control server")
    parser.add_argument("--native", action="store_true", help="the clients are scripts/api-load.c, in C (needs gcc)")
    args = parser.parse_args()
    if not os.access(args.kestrel, os.X_OK):
        sys.exit(f"api-concurrency-bench: {args.kestrel} is not built (swift build -c release, or give --kestrel)")
    with tempfile.TemporaryDirectory(prefix="kestrel-apibench") as directory:
        if args.native:
            NATIVE.append(os.path.join(directory, "api-load"))
            subprocess.run(["gcc", "-O2", "-Wall", "-o", NATIVE[0], os.path.join(ROOT, "scripts", "api-load.c")], check=True)
        kestrel_socket = os.path.join(directory, "api.sock")
        kestrel = measure([args.kestrel, "run", "--api-sock", kestrel_socket], kestrel_socket, args)
        failed = report("kestrel", *kestrel, args)
        if not args.no_control:
            control_socket = os.path.join(directory, "control.sock")
            control = measure([sys.executable, "-c", CONTROL_SERVER, control_socket], control_socket, args)
            report("control", *control, args)
            ratio = summary(kestrel[1][0])[1] / summary(control[1][0])[1]
            print(f"Kestrel's {args.clients}-client p99 against the control server's: {ratio:.2f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
