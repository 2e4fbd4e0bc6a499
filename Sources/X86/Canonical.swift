/// Canonical-address checks for 48-bit (4-level paging) or 57-bit (LA57)
/// linear addresses: bits 63 down to the top implemented bit are all equal.
public enum CanonicalAddress {
    public static func isCanonical(_ address: UInt64, virtualAddressBits: Int = 48) -> Bool {
        let shift = UInt64(64 - virtualAddressBits)
        return UInt64(bitPattern: Int64(bitPattern: address << shift) >> Int64(shift)) == address
    }
}
