import Synchronization

/// Watches the guest's console for Linux's panic line ("Kernel panic - not
/// syncing: ..."), so that a run the panic ends (by the reset `panic=-1`
/// asks for, or a hang stopped by a signal) is reported as a panic with its
/// message instead of a bare reset.
public final class GuestPanicWatcher: Sendable {
    static let marker = Array("Kernel panic - not syncing".utf8)
    static let maximumLine = 512

    private struct State {
        var line: [UInt8] = []
        var message: String?
    }
    private let state = Mutex(State())

    public init() {}

    /// Feeds one console byte.
    public func consume(_ byte: UInt8) {
        state.withLock { state in
            if byte == 0x0A || byte == 0x0D {
                if state.message == nil, let start = Self.find(Self.marker, in: state.line) {
                    state.message = String(decoding: state.line[start...], as: UTF8.self)
                }
                state.line.removeAll(keepingCapacity: true)
            } else if state.line.count < Self.maximumLine {
                state.line.append(byte)
            }
        }
    }

    /// The first panic line seen, from "Kernel panic" on.
    public var panicMessage: String? { state.withLock { $0.message } }

    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        return (0...(haystack.count - needle.count)).first { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }
}
