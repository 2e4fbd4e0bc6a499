/// An error found before any system call was made: an argument that KVM would
/// refuse or that Kestrel cannot represent.
public struct KVMUsageError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
