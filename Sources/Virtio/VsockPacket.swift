/// The header of a virtio-vsock packet (struct virtio_vsock_hdr, virtio 1.2
/// section 5.10.6), 44 bytes, little-endian.
public struct VsockHeader: Equatable, Sendable {
    public enum Operation: UInt16, Sendable {
        case request = 1, response = 2, reset = 3, shutdown = 4, readWrite = 5, creditUpdate = 6, creditRequest = 7
    }

    public static let size = 44
    /// VIRTIO_VSOCK_TYPE_STREAM.
    public static let streamType: UInt16 = 1
    /// SHUTDOWN flags: the sender will receive no more, send no more.
    public static let shutdownReceive: UInt32 = 1, shutdownSend: UInt32 = 2

    public var sourceCID: UInt64
    public var destinationCID: UInt64
    public var sourcePort: UInt32
    public var destinationPort: UInt32
    public var length: UInt32
    public var type: UInt16
    public var operation: UInt16
    public var flags: UInt32
    public var bufferAllocation: UInt32
    public var forwardCount: UInt32

    public init(sourceCID: UInt64, destinationCID: UInt64, sourcePort: UInt32, destinationPort: UInt32, length: UInt32 = 0,
                type: UInt16 = VsockHeader.streamType, operation: Operation, flags: UInt32 = 0, bufferAllocation: UInt32 = 0,
                forwardCount: UInt32 = 0) {
        self.sourceCID = sourceCID
        self.destinationCID = destinationCID
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        self.type = type
        self.operation = operation.rawValue
        self.flags = flags
        self.bufferAllocation = bufferAllocation
        self.forwardCount = forwardCount
    }

    /// Parses the first 44 bytes; nil when fewer are given.
    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= Self.size else { return nil }
        func field<T: FixedWidthInteger>(_ offset: Int) -> T {
            (0..<MemoryLayout<T>.size).reduce(T.zero) { $0 | T(bytes[offset + $1]) << (8 * $1) }
        }
        sourceCID = field(0)
        destinationCID = field(8)
        sourcePort = field(16)
        destinationPort = field(20)
        length = field(24)
        type = field(28)
        operation = field(30)
        flags = field(32)
        bufferAllocation = field(36)
        forwardCount = field(40)
    }

    public var bytes: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.size)
        func put<T: FixedWidthInteger>(_ value: T) {
            for index in 0..<MemoryLayout<T>.size { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * index))) }
        }
        put(sourceCID); put(destinationCID); put(sourcePort); put(destinationPort); put(length)
        put(type); put(operation); put(flags); put(bufferAllocation); put(forwardCount)
        return bytes
    }

    public var knownOperation: Operation? { Operation(rawValue: operation) }
}

/// The first line a host program writes on Firecracker's vsock Unix socket:
/// `CONNECT <port>\n`. The answer is `OK <host port>\n`.
public enum VsockHandshake {
    /// The longest line accepted, newline included.
    public static let maximumLength = 32

    /// The port of a complete CONNECT line (without its newline), or nil.
    public static func port(fromLine line: [UInt8]) -> UInt32? {
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("CONNECT ") else { return nil }
        let digits = text.dropFirst("CONNECT ".count).drop { $0 == " " }
        guard !digits.isEmpty, digits.count <= 10, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
        return UInt32(digits)
    }
}
