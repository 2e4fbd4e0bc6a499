// Fuzz target: the MMDS's answers to the guest's HTTP requests and its data
// store. The input's first byte picks a store operation (a PUT or PATCH of
// the JSON that follows the first NUL, if any); the rest is read as HTTP
// requests, each answered by the service in V1 and V2, the answer checked
// to serialize with a status the MMDS uses.
import Metadata
import WireFormats

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMetadataRequests(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let service = MetadataService(sizeLimit: 4096)
    try? service.put(.object(["latest": .object(["meta-data": .object(["id": .string("i-1"), "n": .number(1)])])]))
    var requestBytes = bytes.dropFirst()
    if let nul = requestBytes.firstIndex(of: 0) {
        if let value = try? JSONValue.parse(Array(requestBytes[requestBytes.startIndex..<nul])) {
            if bytes[0] & 1 == 0 { try? service.put(value) } else { try? service.patch(value) }
            precondition(service.contents.rendered.utf8.count <= 4096 || service.contents == .object([:]), "the store keeps its limit")
            _ = service.contents.value(atPointer: String(decoding: requestBytes.prefix(16), as: UTF8.self))
        }
        requestBytes = requestBytes[(nul + 1)...]
    }
    service.configure(version: bytes[0] & 2 == 0 ? .v1 : .v2, imdsCompatible: bytes[0] & 4 != 0)
    var reader = HTTPRequestReader(maximumBodyBytes: 4096)
    reader.append(requestBytes)
    while true {
        guard let event = try? reader.next() else { break }
        guard case .request(let request) = event else { continue }
        let response = service.respond(to: request)
        precondition([200, 400, 401, 404, 405, 501].contains(response.status), "an MMDS status")
        _ = response.serialized(closing: !request.keepsConnection)
    }
    return 0
}
