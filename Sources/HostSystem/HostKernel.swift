import Glibc

/// The running kernel as uname(2) reports it.
public enum HostKernel {
    /// The kernel release (uname -r).
    public static var release: String { field(\.release) }
    /// The machine architecture (uname -m: x86_64, aarch64).
    public static var machine: String { field(\.machine) }

    private static func field<T>(_ path: KeyPath<utsname, T>) -> String {
        var system = utsname()
        uname(&system)
        return withUnsafeBytes(of: system[keyPath: path]) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
