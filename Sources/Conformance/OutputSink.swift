/// Where a reporter writes text (standard output by default; tests capture it).
public final class OutputSink {
    private let write: (String) -> Void
    public init(_ write: @escaping (String) -> Void) { self.write = write }

    public static let standardOutput = OutputSink { text in
        print(text, terminator: "")
        fflushStandardOutput()
    }

    func line(_ text: String) { write(text + "\n") }
}

#if canImport(Glibc)
import Glibc
func fflushStandardOutput() { fflush(stdout) }
#else
func fflushStandardOutput() {}
#endif
