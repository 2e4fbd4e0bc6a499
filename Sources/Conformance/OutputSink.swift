/// Where a reporter writes text (standard output by default; tests capture it).
public final class OutputSink: Sendable {
    private let write: @Sendable (String) -> Void
    public init(_ write: @escaping @Sendable (String) -> Void) { self.write = write }

    public static let standardOutput = OutputSink { text in
        print(text, terminator: "")
        fflushStandardOutput()
    }

    func line(_ text: String) { write(text + "\n") }
}

#if canImport(Glibc)
import Glibc
func fflushStandardOutput() {
    // Swift 6 sees glibc's `stdout` as a mutable global; fflush(NULL) flushes
    // every output stream, stdout included, without touching it.
    fflush(nil)
}
#else
func fflushStandardOutput() {}
#endif
