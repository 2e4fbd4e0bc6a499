import ArgumentParser
import Glibc
import HostSystem
import TextFormat

/// `kestrel vsock`: talk over virtio-vsock from either side, like `nc` for
/// Firecracker's hybrid model.
struct VsockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsock",
        abstract: "Connect or listen over vsock: on the host through the VMM's Unix socket, in the guest through AF_VSOCK.",
        discussion: """
            Host side (the VMM was started with --vsock UDS):
              kestrel vsock connect --uds UDS --port 52      # writes CONNECT 52, waits for OK, then relays stdin/stdout
              kestrel vsock listen --uds UDS --port 5000     # accepts a guest connection to the host's port 5000 on UDS_5000
            Guest side:
              kestrel vsock connect --port 5000              # to the host (CID 2)
              kestrel vsock listen --port 52 --echo          # answer host connections by echoing
            Either side, against an echoing peer:
              kestrel vsock ping --uds UDS --port 52 --count 1000   # round-trip latency: median, p90, p99, min
            """,
        subcommands: [Connect.self, Listen.self, Ping.self])

    struct Connect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Connect, then relay stdin to the peer and the peer to stdout.")
        @Option(help: "The VMM's vsock Unix socket (host side); without it, AF_VSOCK (guest side).") var uds: String?
        @Option(help: "With AF_VSOCK: the peer's CID (2 is the host).") var cid: UInt32 = VsockSocket.hostCID
        @Option(help: "The port to connect to.") var port: UInt32
        @Flag(help: "Echo what the peer sends instead of relaying stdin.") var echo = false

        func run() throws {
            try serve(try connection(uds: uds, cid: cid, port: port), echo: echo)
        }
    }

    struct Ping: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure round trips to a peer that echoes (kestrel vsock listen --echo).",
            discussion: "Prints one line: round trips, message size, then the median, p90, p99 and minimum in microseconds.")
        @Option(help: "The VMM's vsock Unix socket (host side); without it, AF_VSOCK.") var uds: String?
        @Option(help: "With AF_VSOCK: the peer's CID (2 is the host).") var cid: UInt32 = VsockSocket.hostCID
        @Option(help: "The port to connect to.") var port: UInt32
        @Option(help: "Round trips to time.") var count = 1000
        @Option(help: "Bytes in each message.") var size = 64
        @Option(help: "Untimed round trips first.") var warmup = 20

        func validate() throws {
            guard count > 0 else { throw ValidationError("--count must be at least 1") }
            guard (1...65536).contains(size) else { throw ValidationError("--size must be 1 to 65536 bytes") }
            guard warmup >= 0 else { throw ValidationError("--warmup cannot be negative") }
        }

        func run() throws {
            let fd = try connection(uds: uds, cid: cid, port: port)
            defer { close(fd) }
            let message = (0..<size).map { UInt8(truncatingIfNeeded: $0) }
            var reply = [UInt8](repeating: 0, count: size)
            var samples: [Duration] = []
            samples.reserveCapacity(count)
            for round in 0..<(warmup + count) {
                let start = ContinuousClock.now
                try send(fd, message)
                try receive(fd, into: &reply)
                let elapsed = ContinuousClock.now - start
                guard reply == message else { throw CommandFailure("round trip \(round + 1): the peer sent back different bytes (is it echoing?)") }
                if round >= warmup { samples.append(elapsed) }
            }
            samples.sort()
            func microseconds(_ fraction: Double) -> String {
                let sample = samples[min(samples.count - 1, Int(fraction * Double(samples.count)))]
                let (seconds, attoseconds) = sample.components
                return (Double(seconds) * 1e6 + Double(attoseconds) / 1e12).text(places: 1)
            }
            print("round-trips \(count) size \(size) median-us \(microseconds(0.5)) p90-us \(microseconds(0.9)) "
                + "p99-us \(microseconds(0.99)) min-us \(microseconds(0))")
        }
    }

    struct Listen: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Accept one connection, then relay (or echo) it.")
        @Option(help: "The VMM's vsock Unix socket (host side): listen on UDS_PORT; without it, AF_VSOCK (guest side).") var uds: String?
        @Option(help: "The port to listen on.") var port: UInt32
        @Flag(help: "Echo what the peer sends instead of relaying stdin.") var echo = false

        func run() throws {
            let listener: Int32
            if let uds {
                listener = try UnixSocket.listen(at: "\(uds)_\(port)")
                try UnixSocket.setNonBlocking(listener, false)
            } else {
                listener = try VsockSocket.listen(port: port)
            }
            printError("kestrel vsock: listening on \(uds.map { "\($0)_\(port)" } ?? "vsock port \(port)")")
            let fd = Glibc.accept(listener, nil, nil)
            guard fd >= 0 else { throw SystemCallError.current("accept") }
            close(listener)
            if let uds { unlink("\(uds)_\(port)") }
            try serve(fd, echo: echo)
        }
    }
}

/// A connected stream: over the VMM's Unix socket with Firecracker's
/// `CONNECT <port>` handshake, or over AF_VSOCK.
private func connection(uds: String?, cid: UInt32, port: UInt32) throws -> Int32 {
    guard let uds else { return try VsockSocket.connect(cid: cid, port: port) }
    let fd = try UnixSocket.connect(to: uds)
    try UnixSocket.setNonBlocking(fd, false)
    try send(fd, Array("CONNECT \(port)\n".utf8))
    let line = try readLine(fd)
    guard line.hasPrefix("OK ") else {
        close(fd)
        throw CommandFailure("\(uds): the VMM answered \"\(line)\" instead of OK (nobody listens on port \(port)?)")
    }
    printError("kestrel vsock: connected to guest port \(port) (\(line))")
    return fd
}

/// Fills `buffer` from `fd`, failing if the peer ends the stream first.
private func receive(_ fd: Int32, into buffer: inout [UInt8]) throws {
    var offset = 0
    while offset < buffer.count {
        let count = buffer[offset...].withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count < 0 { throw SystemCallError.current("read") }
        guard count > 0 else { throw CommandFailure("the peer ended the stream after \(offset) of \(buffer.count) bytes") }
        offset += count
    }
}

private func send(_ fd: Int32, _ bytes: [UInt8]) throws {
    var offset = 0
    while offset < bytes.count {
        let count = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { throw SystemCallError.current("write") }
        offset += count
    }
}

/// Reads one line (without its newline), a byte at a time so nothing after it is consumed.
private func readLine(_ fd: Int32) throws -> String {
    var line: [UInt8] = []
    var byte: UInt8 = 0
    while line.count < 64 {
        let count = read(fd, &byte, 1)
        if count < 0 && errno == EINTR { continue }
        guard count == 1 else { break }
        if byte == 0x0A { return String(decoding: line, as: UTF8.self) }
        line.append(byte)
    }
    return String(decoding: line, as: UTF8.self)
}

/// Relays stdin to `fd` and `fd` to stdout until both directions end (the
/// peer's end of stream, and stdin's end, which shuts down our sending side),
/// or echoes `fd` back to itself until the peer stops sending.
private func serve(_ fd: Int32, echo: Bool) throws {
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 64 << 10)
    var stdinOpen = !echo
    var peerOpen = true
    while peerOpen || stdinOpen {
        var entries: [pollfd] = []
        if peerOpen { entries.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        if stdinOpen { entries.append(pollfd(fd: 0, events: Int16(POLLIN), revents: 0)) }
        if poll(&entries, nfds_t(entries.count), -1) < 0 {
            if errno == EINTR { continue }
            throw SystemCallError.current("poll")
        }
        for entry in entries where entry.revents != 0 {
            let count = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if entry.fd == fd {
                if count <= 0 { peerOpen = false; if echo { shutdown(fd, Int32(SHUT_WR)) }; continue }
                try send(echo ? fd : 1, Array(buffer.prefix(count)))
            } else if count <= 0 {
                stdinOpen = false
                shutdown(fd, Int32(SHUT_WR))
            } else {
                try send(fd, Array(buffer.prefix(count)))
            }
        }
    }
}
