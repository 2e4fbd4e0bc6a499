/// Every conformance suite Kestrel has, in run order.
public enum ConformanceCatalog {
    /// The suites' names, for help text.
    public static let suiteNames = [BasicsSuite.name, CPUIDSuite.name, GuestMemfdSuite.name, PrivateMemorySuite.name, CETMSRSuite.name, FREDSuite.name, RealmSuite.name]

    /// All tests, parametrized for this host (VM types, guest_memfd flags).
    public static func allTests(host: HostProbe) -> [ConformanceTest] {
        BasicsSuite.tests() + CPUIDSuite.tests() + GuestMemfdSuite.tests(host: host) + PrivateMemorySuite.tests() + CETMSRSuite.tests() + FREDSuite.tests() + RealmSuite.tests()
    }
}
