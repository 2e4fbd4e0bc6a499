import VMM
import WireFormats

/// Kestrel's memory introspection routes, extensions under `/kestrel/`, a
/// prefix no Firecracker route can take (Firecracker's resources are named
/// for what they configure; forks that added memory routes put them at
/// `/memory`, `/memory/mappings` and `/memory/dirty`, names upstream may
/// want one day):
///
/// - `GET /kestrel/memory`: the RAM regions: `guest_phys_addr`, `size`,
///   `base_host_virt_addr` (Kestrel's mapping), `offset` (where the region
///   lies in a snapshot's or dump's memory file), `page_size`, `backing`
///   (`anonymous`, `memory file`, `guest_memfd`), `dirty_log`.
/// - `GET /kestrel/memory/dirty`: the pages changed since the last
///   snapshot, or since the last reset after it: `tracking` (`dirty_log` with
///   track_dirty_pages, else `resident`: every page the host has),
///   `since`, `page_size`, `dirty_pages`, and per region its `runs`, each
///   `[first page, page count]`. Reading it takes nothing from the next Diff.
/// - `PUT /kestrel/memory/dirty/reset`: the report starts over (needs
///   track_dirty_pages); the next Diff still holds every page changed since
///   the last snapshot.
/// - `PUT /kestrel/memory/dump` `{"mem_file_path": PATH, "dirty_only": false}`:
///   while paused, guest RAM into a new file at PATH laid out like a Full
///   snapshot's memory file (or with `dirty_only` like a Diff's, the
///   report's pages); answers `size` and `bytes_written`.
/// - `PUT /kestrel/snapshot/live`: see `liveSnapshot`.
extension FirecrackerAPI {
    func kestrelExtension(_ request: HTTPRequest, _ path: [String]) throws(ResponseError) -> HTTPResponse? {
        let place = "\(request.method) \(request.path)"
        if path == ["snapshot", "live"] { return request.method == "PUT" ? try liveSnapshot(request) : nil }
        switch (request.method, path) {
        case ("GET", ["memory"]), ("GET", ["memory", "dirty"]), ("PUT", ["memory", "dirty", "reset"]), ("PUT", ["memory", "dump"]): break
        default: return nil
        }
        if request.method == "GET" || path.last == "reset", !request.body.isEmpty {
            return .fault(400, "\(place): takes no body")
        }
        var dump: (path: String, dirtyOnly: Bool)?
        if path.last == "dump" {
            let body = try Self.jsonBody(request)
            guard let object = body.objectValue else { return .fault(400, "\(place): the body must be a JSON object") }
            if let unknown = object.keys.sorted().first(where: { !["mem_file_path", "dirty_only"].contains($0) }) {
                return .fault(400, "\(place): unknown field \(unknown)")
            }
            guard let target = object["mem_file_path"]?.stringValue, !target.isEmpty else {
                return .fault(400, "\(place): mem_file_path is a required string")
            }
            var dirtyOnly = false
            if let value = object["dirty_only"], value != .null {
                guard let flag = value.boolValue else { return .fault(400, "\(place): dirty_only must be a boolean") }
                dirtyOnly = flag
            }
            dump = (target, dirtyOnly)
        }
        guard vmState != .notStarted else { return .fault(400, "\(place): the microVM has not started; there is no guest memory yet") }
        do {
            switch path {
            case ["memory"]:
                let regions = try control.memoryRegions()
                return .json(200, JSONValue.object([
                    "regions": .array(regions.map { region in
                        .object([
                            "slot": .number(Double(region.slot)), "guest_phys_addr": .number(Double(region.guestAddress)),
                            "size": .number(Double(region.size)), "base_host_virt_addr": .number(Double(region.hostAddress)),
                            "offset": .number(Double(region.fileOffset)), "page_size": .number(Double(region.pageSize)),
                            "backing": .string(region.backing), "dirty_log": .bool(region.logsDirtyPages),
                        ])
                    }),
                    "total_bytes": .number(Double(regions.reduce(0) { $0 + $1.size })),
                ]).rendered)
            case ["memory", "dirty"]:
                let report = try control.dirtyPages()
                return .json(200, JSONValue.object([
                    "tracking": .string(report.tracking), "since": .string(report.since), "page_size": .number(Double(report.pageSize)),
                    "dirty_pages": .number(Double(report.pageCount)),
                    "regions": .array(report.regions.map { region in
                        .object([
                            "guest_phys_addr": .number(Double(region.guestAddress)), "size": .number(Double(region.size)),
                            "runs": .array(region.runs.map { .array([.number(Double($0.lowerBound)), .number(Double($0.count))]) }),
                        ])
                    }),
                ]).rendered)
            case ["memory", "dirty", "reset"]:
                try control.resetDirtyPages()
                return .noContent
            default:
                let (target, dirtyOnly) = dump!
                let written = try control.dumpMemory(path: target, dirtyOnly: dirtyOnly)
                return .json(200, JSONValue.object([
                    "mem_file_path": .string(target), "size": .number(Double(written.size)), "bytes_written": .number(Double(written.bytesWritten)),
                ]).rendered)
            }
        } catch {
            return .fault(400, "\(place): \(error)")
        }
    }
}
