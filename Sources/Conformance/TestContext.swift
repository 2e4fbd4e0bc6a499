import GuestKit
import KVM
import SystemPackage

/// A failed expectation; its message is the test's diagnosis.
public struct TestFailure: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Thrown to end a test as SKIP with a reason (a requirement discovered late).
public struct TestSkip: Error, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// What a test body gets: the host, a log, and expectation helpers.
public final class TestContext {
    public let kvm: KVMSystem
    public let host: HostProbe
    public private(set) var log: [String] = []

    init(kvm: KVMSystem, host: HostProbe) {
        self.kvm = kvm
        self.host = host
    }

    /// Records a line for verbose output and JSON.
    public func note(_ message: String) { log.append(message) }

    /// Ends the test as SKIP.
    public func skip(_ reason: String) throws -> Never { throw TestSkip(reason) }

    /// Fails unless `condition` holds.
    public func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw TestFailure(message()) }
    }

    /// Fails unless the two values are equal, naming both.
    public func expectEqual<T: Equatable>(_ actual: T, _ expected: T, _ what: @autoclosure () -> String) throws {
        if actual != expected { throw TestFailure("\(what()): got \(actual), expected \(expected)") }
    }

    /// Fails unless the two integers are equal, naming both in hex.
    public func expectEqualHex<T: BinaryInteger>(_ actual: T, _ expected: T, _ what: @autoclosure () -> String) throws {
        if actual != expected {
            throw TestFailure("\(what()): got 0x\(String(actual, radix: 16)), expected 0x\(String(expected, radix: 16))")
        }
    }

    /// Fails unless the guest reported #GP(0).
    public func expectGeneralProtection(_ exception: GuestException?, _ what: @autoclosure () -> String) throws {
        guard exception?.matches(vector: 13, errorCode: 0) == true else {
            throw TestFailure("\(what()): expected #GP(0), got \(exception.map { "\($0)" } ?? "no exception")")
        }
    }

    /// Raw helper: runs `body` and returns the errno it failed with, or nil if
    /// it succeeded. KVM and mapping errors carry their errno.
    public func errno(of body: () throws -> Void) throws -> Errno? {
        do {
            try body()
            return nil
        } catch let error as SystemCallError {
            return error.errno
        }
    }

    /// Fails unless `body` fails with `expected`.
    public func expectErrno(_ expected: Errno, _ what: @autoclosure () -> String, _ body: () throws -> Void) throws {
        let got = try errno(of: body)
        if got != expected {
            throw TestFailure("\(what()): expected failure with \(expected.symbolicName), got " + (got.map { $0.symbolicName } ?? "success"))
        }
    }

    /// Fails unless `body` succeeds, naming the errno when it does not.
    public func expectSuccess(_ what: @autoclosure () -> String, _ body: () throws -> Void) throws {
        if let got = try errno(of: body) { throw TestFailure("\(what()): expected success, got \(got.symbolicName)") }
    }
}
