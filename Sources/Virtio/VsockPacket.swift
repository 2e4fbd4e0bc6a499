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
        sourceCID = bytes.littleEndian(at: 0)
        destinationCID = bytes.littleEndian(at: 8)
        sourcePort = bytes.littleEndian(at: 16)
        destinationPort = bytes.littleEndian(at: 20)
        length = bytes.littleEndian(at: 24)
        type = bytes.littleEndian(at: 28)
        operation = bytes.littleEndian(at: 30)
        flags = bytes.littleEndian(at: 32)
        bufferAllocation = bytes.littleEndian(at: 36)
        forwardCount = bytes.littleEndian(at: 40)
    }

    public var bytes: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.size)
        bytes.appendLittleEndian(sourceCID); bytes.appendLittleEndian(destinationCID)
        bytes.appendLittleEndian(sourcePort); bytes.appendLittleEndian(destinationPort); bytes.appendLittleEndian(length)
        bytes.appendLittleEndian(type); bytes.appendLittleEndian(operation); bytes.appendLittleEndian(flags)
        bytes.appendLittleEndian(bufferAllocation); bytes.appendLittleEndian(forwardCount)
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
