import VMM
import WireFormats

extension FirecrackerAPI {
    /// `PUT /kestrel/snapshot/live` `{"snapshot_path": PATH, "mem_file_path": PATH}`,
    /// a Kestrel extension: a Full snapshot (the same two files as
    /// `PUT /snapshot/create` writes) of a running or paused microVM whose
    /// RAM is shared memory (machine-config `memory_backend: "shared"`). The
    /// guest pauses only while its state is read and its RAM write-protected;
    /// RAM is copied while it runs. Answers once both files are whole, with
    /// `pause_us` (how long the guest was paused), `duration_us`,
    /// `bytes_written` and `faults` (writes that waited for their page).
    func liveSnapshot(_ request: HTTPRequest) throws(ResponseError) -> HTTPResponse {
        let place = "PUT /kestrel/snapshot/live"
        let body = try Self.jsonBody(request)
        guard let object = body.objectValue else { return .fault(400, "\(place): the body must be a JSON object") }
        if let unknown = object.keys.sorted().first(where: { !["snapshot_path", "mem_file_path"].contains($0) }) {
            return .fault(400, "\(place): unknown field \(unknown)")
        }
        guard let statePath = object["snapshot_path"]?.stringValue, let memoryPath = object["mem_file_path"]?.stringValue,
              !statePath.isEmpty, !memoryPath.isEmpty else {
            return .fault(400, "\(place): snapshot_path and mem_file_path are required strings")
        }
        guard statePath != memoryPath else { return .fault(400, "\(place): snapshot_path and mem_file_path must differ") }
        guard vmState != .notStarted else { return .fault(400, "Cannot create a snapshot before the microVM has started.") }
        let report: Machine.LiveSnapshotReport
        do { report = try control.createLiveSnapshot(statePath: statePath, memoryPath: memoryPath) } catch {
            return .fault(400, "Cannot create the snapshot: \(error)")
        }
        func microseconds(_ duration: Duration) -> Double {
            (Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12).rounded()
        }
        return .json(200, JSONValue.object([
            "pause_us": .number(microseconds(report.pause)), "duration_us": .number(microseconds(report.duration)),
            "bytes_written": .number(Double(report.memoryBytesWritten)), "faults": .number(Double(report.faults)),
        ]).rendered)
    }
}
