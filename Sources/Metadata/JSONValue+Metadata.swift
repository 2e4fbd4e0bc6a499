import WireFormats

extension JSONValue {
    /// The value a JSON Pointer (RFC 6901) names: "" is the whole document,
    /// "/a/b" member b of member a; "~1" and "~0" stand for '/' and '~';
    /// array elements are named by decimal index. Nil when nothing is there.
    public func value(atPointer pointer: String) -> JSONValue? {
        if pointer.isEmpty { return self }
        guard pointer.hasPrefix("/") else { return nil }
        var current = self
        for token in pointer.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            let name = String(token).replacing("~1", with: "/").replacing("~0", with: "~")
            switch current {
            case .object(let members):
                guard let next = members[name] else { return nil }
                current = next
            case .array(let elements):
                // RFC 6901: no leading zeros, no sign.
                guard let index = Int(name), String(index) == name, index >= 0, index < elements.count else { return nil }
                current = elements[index]
            default:
                return nil
            }
        }
        return current
    }

    /// This value with `patch` merged in, as JSON Merge Patch (RFC 7396)
    /// says: an object patch sets its members recursively and removes those
    /// it gives as null; any other patch replaces the value.
    public func merging(_ patch: JSONValue) -> JSONValue {
        guard case .object(let changes) = patch else { return patch }
        var members = objectValue ?? [:]
        for (key, change) in changes {
            if change == .null {
                members[key] = nil
            } else {
                members[key] = (members[key] ?? .null).merging(change)
            }
        }
        return .object(members)
    }
}
