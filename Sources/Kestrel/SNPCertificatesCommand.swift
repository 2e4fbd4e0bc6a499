import ArgumentParser
import Confidential
import ConfidentialTools
import FoundationEssentials
import Glibc

/// `kestrel snp certs`: build, show and install GHCB certificate blobs.
struct SNPCertificatesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Build, inspect and install the certificate blob SNP guests receive with attestation reports.",
        subcommands: [Build.self, Show.self, Install.self])

    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a GHCB certificate table blob from certificate files.",
            discussion: """
                Certificates may be DER or PEM (one certificate per file; PEM is stored as DER). \
                Entries appear in the order VCEK, VLEK, ASK, ARK, then each --entry. \
                Example: kestrel snp certs build --vcek vcek.der --ask ask.pem --ark ark.pem -o certs.bin
                """)

        @Option(help: "The VCEK certificate.") var vcek: String?
        @Option(help: "The VLEK certificate.") var vlek: String?
        @Option(help: "The ASK certificate.") var ask: String?
        @Option(help: "The ARK certificate.") var ark: String?
        @Option(name: .customLong("entry"), help: ArgumentHelp("Any other entry, as GUID=FILE (the GUID may also be vcek, vlek, ask or ark); repeatable.", valueName: "GUID=FILE"))
        var entries: [String] = []
        @Option(name: [.short, .customLong("output")], help: "Where to write the blob.") var output: String
        @Flag(help: "Replace the output file if it exists.") var force = false

        func validate() throws {
            if vcek == nil && vlek == nil && entries.isEmpty && ask == nil && ark == nil {
                throw ValidationError("give at least one certificate (--vcek, --vlek, --ask, --ark or --entry)")
            }
        }

        func run() throws {
            var sources: [(label: String, guid: SNPCertificateGUID, path: String)] = []
            for (label, guid, path) in [("--vcek", SNPCertificateGUID.vcek, vcek), ("--vlek", .vlek, vlek), ("--ask", .ask, ask), ("--ark", .ark, ark)] {
                if let path { sources.append((label, guid, path)) }
            }
            for entry in entries {
                guard let equals = entry.firstIndex(of: "="), equals != entry.startIndex, entry.index(after: equals) != entry.endIndex else {
                    throw ValidationError("--entry \(entry): expected GUID=FILE")
                }
                let text = String(entry[..<equals])
                guard let guid = SNPCertificateGUID(text) else {
                    throw ValidationError("--entry \(entry): \(text) is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) or a known name")
                }
                sources.append(("--entry \(text)", guid, String(entry[entry.index(after: equals)...])))
            }
            for (index, source) in sources.enumerated() {
                if let earlier = sources[..<index].first(where: { $0.guid == source.guid }) {
                    throw ValidationError("\(earlier.label) and \(source.label) both give GUID \(source.guid)")
                }
            }
            if vcek == nil && vlek == nil {
                printError("kestrel: note: the blob has neither a VCEK nor a VLEK, which guests need to check the report signature")
            }
            var certificates: [(guid: SNPCertificateGUID, data: [UInt8])] = []
            for source in sources {
                let loaded = try CertificateInput.load(path: source.path)
                if loaded.convertedFromPEM { printError("kestrel: \(source.path): PEM converted to DER") }
                if case .failure(let error) = CertificateSummary.inspect(loaded.bytes) {
                    printError("kestrel: note: \(source.path) is not an X.509 certificate (\(error.reason)); stored as given")
                }
                certificates.append((source.guid, loaded.bytes))
            }
            let table = try SNPCertificateTable(certificates)
            let blob = table.encoded()
            _ = try SNPCertificateTable(parsing: blob)  // what we write must read back
            try writeNewFile(blob, to: output, replacing: force)
            print("wrote \(output): \(table.entries.count) entries, \(blob.count) bytes (\((blob.count + 4095) / 4096) guest pages)")
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List a certificate blob's entries, sizes, and the subject and validity of X.509 certificates.")

        @Argument(help: "The blob file.") var blob: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            guard let data = FileManager.default.contents(atPath: blob) else {
                throw CommandFailure("cannot read \(blob)")
            }
            let bytes = [UInt8](data)
            let table: SNPCertificateTable
            do { table = try SNPCertificateTable(parsing: bytes) } catch {
                printError("kestrel: \(blob) is not a valid certificate table: \(error)")
                throw ExitCode(1)
            }
            print(json ? try CertificateBlobReport.json(for: table, blobSize: bytes.count)
                       : CertificateBlobReport.text(for: table, blobSize: bytes.count))
        }
    }

    struct Install: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace a live certificate file in place under an exclusive lock.",
            discussion: """
                VMMs serving certificate requests hold a shared lock on the file while a request \
                is in flight. This waits for them (up to --timeout-ms), rewrites FILE in place with \
                BLOB's contents, and releases the lock. Run it around firmware key or TCB updates \
                (or with --hold-ms while one runs) so guests never get certificates that do not \
                match the key that signed their report.
                """)

        @Argument(help: "The certificate blob to install.") var blob: String
        @Option(name: .customLong("into"), help: "The live certificate file VMMs read.") var file: String
        @Option(help: "How long to wait for the exclusive lock, in milliseconds.") var timeoutMs = 5000
        @Option(help: "Keep the lock this many milliseconds after writing (to cover a firmware update).") var holdMs = 0

        func run() throws {
            guard let data = FileManager.default.contents(atPath: blob) else { throw CommandFailure("cannot read \(blob)") }
            let bytes = [UInt8](data)
            do { _ = try SNPCertificateTable(parsing: bytes) } catch {
                printError("kestrel: refusing to install \(blob): \(error)")
                throw ExitCode(1)
            }
            if !FileManager.default.fileExists(atPath: file) {
                _ = FileManager.default.createFile(atPath: file, contents: nil)
            }
            let lease = try CertificateFileLock.acquire(file, kind: .exclusive, timeout: .milliseconds(timeoutMs))
            try lease.replaceContents(with: bytes)
            if holdMs > 0 { usleep(UInt32(min(holdMs, 3_600_000)) * 1000) }
            lease.release()
            print("installed \(blob) into \(file) (\(bytes.count) bytes)")
        }
    }
}

/// Writes a new file through a temporary name and a rename, so a reader never
/// sees half of it; refuses to replace an existing file unless asked.
func writeNewFile(_ bytes: [UInt8], to path: String, replacing: Bool) throws {
    if FileManager.default.fileExists(atPath: path) && !replacing {
        throw CommandFailure("\(path) exists; pass --force to replace it (or `kestrel snp certs install` for a live file)")
    }
    let temporary = path + ".kestrel-\(getpid())"
    guard FileManager.default.createFile(atPath: temporary, contents: Data(bytes)) else {
        throw CommandFailure("cannot write \(temporary)")
    }
    guard rename(temporary, path) == 0 else {
        let reason = String(cString: strerror(errno))
        unlink(temporary)
        throw CommandFailure("cannot move \(temporary) to \(path): \(reason)")
    }
}
