import KVM

/// The CPUID table type of the KVM layer, named for use in this module's API.
public typealias KVMCPUIDTable = CPUIDTable

/// The CET/FRED-relevant features a vCPU has, as a set.
public struct CPUFeatureSet: Hashable, Sendable, CustomStringConvertible {
    public var features: Set<CPUFeature>

    public init(_ features: Set<CPUFeature>) { self.features = features }

    /// The features of `CPUFeature.seedFeatures` (and XSAVES) present in a table.
    public init(table: CPUIDTable) {
        features = Set((CPUFeature.seedFeatures + [.xsaves]).filter { $0.isPresent(in: table) })
    }

    public func contains(_ feature: CPUFeature) -> Bool { features.contains(feature) }

    public var description: String {
        features.isEmpty ? "none" : features.map(\.name).sorted().joined(separator: ", ")
    }
}
