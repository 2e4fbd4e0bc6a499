import VMM

/// The `logger` and `metrics` bodies (Firecracker's swagger: Logger,
/// Metrics), as `PUT /logger`, `PUT /metrics` and a `--config-file`'s
/// sections give them; a field of the wrong type or an unknown one is refused.
extension EventLogger.Settings {
    public static func parse(_ value: JSONValue, source: String) throws -> EventLogger.Settings {
        guard let object = value.objectValue else { throw ConfigurationError("\(source): the logger must be a JSON object") }
        try MachineConfigFile.refuseUnknownKeys(object, allowed: ["log_path", "level", "show_level", "show_log_origin", "module"], section: "logger", source: source)
        var settings = EventLogger.Settings()
        let fields = MachineConfigFile.Fields(object: object, place: "logger", source: source)
        settings.path = try fields.string("log_path")
        if let name = try fields.string("level") {
            guard let level = EventLogger.Level(name: name) else {
                throw ConfigurationError("\(source): logger.level \"\(name)\" is not one of Off, Error, Warning, Info, Debug, Trace")
            }
            settings.level = level
        }
        settings.showLevel = try fields.bool("show_level") ?? false
        settings.showOrigin = try fields.bool("show_log_origin") ?? false
        settings.module = try fields.string("module")
        return settings
    }
}

extension MetricsReporter.Settings {
    public static func parse(_ value: JSONValue, source: String) throws -> MetricsReporter.Settings {
        guard let object = value.objectValue else { throw ConfigurationError("\(source): the metrics must be a JSON object") }
        try MachineConfigFile.refuseUnknownKeys(object, allowed: ["metrics_path", "emit_id", "properties"], section: "metrics", source: source)
        let fields = MachineConfigFile.Fields(object: object, place: "metrics", source: source)
        guard let path = try fields.string("metrics_path"), !path.isEmpty else { throw ConfigurationError("\(source): metrics.metrics_path is required") }
        var settings = MetricsReporter.Settings(path: path)
        settings.emitID = try fields.bool("emit_id") ?? false
        if let properties = object["properties"], properties != .null {
            guard let members = properties.objectValue else { throw ConfigurationError("\(source): properties must be an object of strings") }
            for (key, value) in members {
                guard let text = value.stringValue else { throw ConfigurationError("\(source): properties.\(key) must be a string") }
                settings.properties[key] = text
            }
        }
        return settings
    }
}
