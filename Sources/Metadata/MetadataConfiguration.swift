/// How the guest reaches the MMDS (Firecracker's `PUT /mmds/config`): which
/// network interfaces carry it, at which IPv4 address, with which version.
public struct MetadataConfiguration: Equatable, Sendable {
    public enum Version: String, CaseIterable, Sendable {
        /// Plain GETs; a token is optional (and counted when missing or bad).
        case v1 = "V1"
        /// Session-oriented: a GET needs a token from `PUT /latest/api/token`.
        case v2 = "V2"
    }

    /// Firecracker's default address, the one EC2's IMDS has.
    public static let defaultIPv4Address: [UInt8] = [169, 254, 169, 254]
    /// The MAC address the MMDS answers ARP with (Firecracker's).
    public static let macAddress: [UInt8] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01]

    public var version: Version
    /// The ids of the interfaces whose guest frames to the address reach the MMDS.
    public var networkInterfaces: [String]
    public var ipv4Address: [UInt8]
    /// Always answer in the IMDS format, whatever the request's Accept says.
    public var imdsCompatible: Bool

    public init(version: Version = .v1, networkInterfaces: [String], ipv4Address: [UInt8] = defaultIPv4Address, imdsCompatible: Bool = false) {
        self.version = version
        self.networkInterfaces = networkInterfaces
        self.ipv4Address = ipv4Address
        self.imdsCompatible = imdsCompatible
    }

    /// Parses dotted-quad IPv4 text ("169.254.169.254"): four decimal parts
    /// of 0 to 255, no leading zeros.
    public static func parseIPv4(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy(\.isASCII), let value = UInt8(part),
                  String(value) == part else { return nil }
            bytes.append(value)
        }
        return bytes
    }

    /// Firecracker's rule for the address (RFC 3927): in 169.254.0.0/16,
    /// outside its first and last /24.
    public static func isUsableLinkLocal(_ address: [UInt8]) -> Bool {
        address.count == 4 && address[0] == 169 && address[1] == 254 && address[2] != 0 && address[2] != 255
    }

    public static func text(_ address: [UInt8]) -> String { address.map(String.init).joined(separator: ".") }
}
