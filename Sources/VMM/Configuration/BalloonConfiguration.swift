/// Firecracker's Balloon body: `amount_mib` to take from the guest,
/// `deflate_on_oom`, `stats_polling_interval_s` (0: no statistics),
/// `free_page_hinting` and `free_page_reporting`.
public struct BalloonConfiguration: Equatable, Sendable {
    public var amountMiB: UInt32
    public var deflateOnOOM: Bool
    public var statisticsInterval: Int
    public var freePageHinting: Bool
    public var freePageReporting: Bool

    public init(amountMiB: UInt32, deflateOnOOM: Bool, statisticsInterval: Int = 0, freePageHinting: Bool = false, freePageReporting: Bool = false) {
        self.amountMiB = amountMiB
        self.deflateOnOOM = deflateOnOOM
        self.statisticsInterval = statisticsInterval
        self.freePageHinting = freePageHinting
        self.freePageReporting = freePageReporting
    }

    public static func parse(_ value: JSONValue, source: String) throws -> BalloonConfiguration {
        guard let object = value.objectValue else { throw ConfigurationError("\(source): balloon must be an object") }
        try MachineConfigFile.refuseUnknownKeys(object, allowed: ["amount_mib", "deflate_on_oom", "stats_polling_interval_s", "free_page_hinting",
                                                                  "free_page_reporting"], section: "balloon", source: source)
        let fields = MachineConfigFile.Fields(object: object, place: "balloon", source: source)
        guard let amount = object["amount_mib"]?.wholeNumber, (0...Int(UInt32.max >> 8)).contains(amount) else {
            throw ConfigurationError("\(source): balloon.amount_mib is required, a whole number of MiB")
        }
        guard let deflate = try fields.bool("deflate_on_oom") else { throw ConfigurationError("\(source): balloon.deflate_on_oom is required") }
        var interval = 0
        if let value = object["stats_polling_interval_s"], value != .null {
            guard let seconds = value.wholeNumber, (0...86400).contains(seconds) else {
                throw ConfigurationError("\(source): balloon.stats_polling_interval_s must be 0 to 86400 seconds")
            }
            interval = seconds
        }
        return BalloonConfiguration(amountMiB: UInt32(amount), deflateOnOOM: deflate, statisticsInterval: interval,
                                    freePageHinting: try fields.bool("free_page_hinting") ?? false,
                                    freePageReporting: try fields.bool("free_page_reporting") ?? false)
    }

    public var document: JSONValue {
        .object(["amount_mib": .number(Double(amountMiB)), "deflate_on_oom": .bool(deflateOnOOM),
                 "stats_polling_interval_s": .number(Double(statisticsInterval)), "free_page_hinting": .bool(freePageHinting),
                 "free_page_reporting": .bool(freePageReporting)])
    }
}
