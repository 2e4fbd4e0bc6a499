/// Plain-text formatting for Kestrel's reports (what String(format:) and
/// padding(toLength:) do, without Foundation), shared by the CLI, the
/// conformance reporters and the lab.
extension Double {
    /// The value rounded to `places` decimals, e.g. 0.1834 with 3 places is "0.183".
    public func text(places: Int) -> String {
        guard isFinite else { return "\(self)" }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let scaled = (abs(self) * scale).rounded()
        guard scaled < 0x1p62 else { return "\(self)" }
        let units = Int(scaled)
        let whole = units / Int(scale), fraction = units % Int(scale)
        let sign = self < 0 && units != 0 ? "-" : ""
        guard places > 0 else { return sign + "\(whole)" }
        let digits = String(fraction)
        return sign + "\(whole)." + String(repeating: "0", count: places - digits.count) + digits
    }
}

extension String {
    /// The string followed by spaces up to `width` characters.
    public func padded(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

extension Duration {
    /// The duration in seconds, as a Double (for timing lines and rates).
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
