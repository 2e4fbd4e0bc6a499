/// Proleptic Gregorian calendar arithmetic in UTC, for certificate times.
enum CivilDate {
    /// Days from 1970-01-01 to the given date (negative before it), by the
    /// era-based algorithm: 400-year eras of 146,097 days, years starting in March
    /// so that the leap day ends the year.
    static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int {
        let shiftedYear = month <= 2 ? year - 1 : year
        let era = (shiftedYear >= 0 ? shiftedYear : shiftedYear - 399) / 400
        let yearOfEra = shiftedYear - era * 400                                    // 0...399
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1  // 0...365, from March 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear  // 0...146096
        return era * 146_097 + dayOfEra - 719_468                                  // 719,468 days from 0000-03-01 to 1970-01-01
    }
}
