import Decompression

/// A loadable kernel module: its name and dependencies from the `.modinfo`
/// section of the ELF object (what `modinfo -F depends` prints).
public struct KernelModule: Equatable, Sendable {
    /// The module name with underscores ("kvm_amd" for kvm-amd.ko).
    public let name: String
    public let dependencies: [String]
    /// The uncompressed ELF object.
    public let object: [UInt8]

    /// Reads a module file's bytes: a plain .ko, or one compressed with xz,
    /// zstd or gzip as distributions ship them.
    public init(file bytes: [UInt8], fileName: String) throws {
        let compression = PayloadCompression.detect(bytes)
        let object = compression == .none ? bytes : try compression.decompress(bytes[...])
        let info = try Self.modinfo(object, fileName: fileName)
        name = info["name"] ?? Self.moduleName(fileName: fileName)
        dependencies = (info["depends"] ?? "").split(separator: ",").map { String($0) }
        self.object = object
    }

    /// "kvm-amd.ko.xz" -> "kvm_amd".
    public static func moduleName(fileName: String) -> String {
        let base = fileName.split(separator: "/").last.map(String.init) ?? fileName
        let stem = base.firstRange(of: ".ko").map { base[..<$0.lowerBound] } ?? base[...]
        return String(stem).replacing("-", with: "_")
    }

    /// The key=value strings of the `.modinfo` section (first value of each key).
    static func modinfo(_ object: [UInt8], fileName: String) throws -> [String: String] {
        func bad(_ why: String) -> LabError { LabError("\(fileName) is not a usable kernel module: \(why)") }
        guard object.count >= 64, object.starts(with: [0x7F, 0x45, 0x4C, 0x46]), object[4] == 2, object[5] == 1 else {
            throw bad("not a little-endian ELF64 object")
        }
        func integer(_ offset: Int, _ size: Int) -> Int? {
            guard offset >= 0, size <= 8, offset + size <= object.count else { return nil }
            var value: UInt64 = 0
            for index in 0..<size { value |= UInt64(object[offset + index]) << (8 * UInt64(index)) }
            return Int(exactly: value)
        }
        guard let sectionTable = integer(0x28, 8), let entrySize = integer(0x3A, 2), let count = integer(0x3C, 2),
              let namesIndex = integer(0x3E, 2), entrySize >= 64, namesIndex < count,
              sectionTable <= object.count, count <= (object.count - sectionTable) / entrySize else {
            throw bad("its section header table is out of bounds")
        }
        func section(_ index: Int) -> (name: Int, range: Range<Int>)? {
            let base = sectionTable + index * entrySize
            guard let name = integer(base, 4), let offset = integer(base + 24, 8), let size = integer(base + 32, 8),
                  offset <= object.count, size <= object.count - offset else { return nil }
            return (name, offset..<(offset + size))
        }
        guard let names = section(namesIndex) else { throw bad("its section name table is out of bounds") }
        for index in 0..<count {
            guard let candidate = section(index), candidate.name < names.range.count else { continue }
            let nameStart = names.range.lowerBound + candidate.name
            let nameBytes = object[nameStart..<names.range.upperBound].prefix { $0 != 0 }
            guard String(decoding: nameBytes, as: UTF8.self) == ".modinfo" else { continue }
            var info: [String: String] = [:]
            for entry in object[candidate.range].split(separator: 0) {
                let text = String(decoding: entry, as: UTF8.self)
                guard let equals = text.firstIndex(of: "=") else { continue }
                let key = String(text[..<equals])
                if info[key] == nil { info[key] = String(text[text.index(after: equals)...]) }
            }
            return info
        }
        throw bad("it has no .modinfo section")
    }

    /// `wanted` and everything they depend on, dependencies first (the order
    /// insmod needs). `available` maps module names to modules.
    public static func loadOrder(_ wanted: [String], available: [String: KernelModule]) throws -> [KernelModule] {
        var ordered: [KernelModule] = []
        var visiting = Set<String>(), done = Set<String>()
        func visit(_ name: String, neededBy: String?) throws {
            guard !done.contains(name) else { return }
            guard let module = available[name] else {
                throw LabError("module \(name) is missing" + (neededBy.map { " (\($0) depends on it)" } ?? ""))
            }
            guard visiting.insert(name).inserted else { throw LabError("modules depend on each other in a cycle through \(name)") }
            for dependency in module.dependencies { try visit(dependency, neededBy: name) }
            visiting.remove(name)
            done.insert(name)
            ordered.append(module)
        }
        for name in wanted { try visit(name, neededBy: nil) }
        return ordered
    }
}
