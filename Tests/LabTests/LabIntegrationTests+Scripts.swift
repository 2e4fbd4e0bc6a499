import Lab
import Testing

/// What the lab tests of Firecracker's API in an L1 share: the shell
/// functions their L1 scripts call, the run with curl added to the L1, and
/// reading the lines the scripts print.
extension LabIntegrationTests {
    /// `c METHOD PATH [curl arguments]`: prints "METHOD PATH BODY STATUS" for
    /// a request to the API at `socket`. CURL stands for curl's path in the
    /// L1, which `runWithCurl` puts in.
    static func curlFunction(socket: String) -> String {
        #"c() { method=$1; path=$2; shift 2; echo "$method $path $(CURL -s -S --max-time 60 --unix-socket \#(socket) -X $method -w ' %{http_code}' "$@" http://localhost$path 2>&1)"; }"#
    }

    /// `now`: milliseconds since boot, from /proc/uptime's hundredths (busybox date has no %N).
    static let nowFunction = #"now() { read up idle < /proc/uptime; echo $(( ${up%.*} * 1000 + 1${up#*.} * 10 - 1000 )); }"#

    /// Writes `guest` to /lab/guest.sh and `l1` (its CURL naming curl's path,
    /// which is added with its libraries) to /lab/l1.sh, and runs the L1
    /// script in a lab that `labArguments` choose (the kernel, more files).
    static func runWithCurl(guest: String, l1: String, in directory: String, labArguments: [String]) throws -> Run {
        let curl = try #require(HostProcess.find("curl"), "curl is not installed (scripts/prepare-host test installs it)")
        try writeFileAtomically(Array(guest.utf8), to: directory + "/guest.sh")
        try writeFileAtomically(Array(l1.replacing("CURL -s", with: curl + " -s").utf8), to: directory + "/l1.sh")
        return try run(["lab", "run"] + labArguments + ["--add", directory + "/guest.sh:/lab/guest.sh", "--add", directory + "/l1.sh:/lab/l1.sh"]
                           + (try programWithLibraries(curl)) + ["--", "sh /lab/l1.sh"], timeout: 900)
    }
}

/// A lab run's output from the last `marker` on (an L1 that died and was
/// booted again ran its script again), read by the lines' leading keys.
struct ScriptOutput {
    let text: String
    let lines: [String]

    init(_ output: String, from marker: String) {
        text = output.ranges(of: marker).last.map { String(output[$0.lowerBound...]) } ?? output
        lines = text.split(separator: "\n").map(String.init)
    }

    /// What follows "KEY " on the first line that starts so, leading blanks dropped.
    func value(_ key: String) -> String? {
        lines.first { $0.hasPrefix(key + " ") }.map { String($0.dropFirst(key.count + 1).drop { $0 == " " }) }
    }

    /// The first word of `value(key)` as a number, or -1.
    func number(_ key: String) -> Int { value(key).flatMap { Int($0.split(separator: " ").first ?? "") } ?? -1 }

    /// The lines after "== NAME" up to the next "== " line.
    func section(_ name: String) -> [String] {
        guard let start = lines.firstIndex(of: "== \(name)") else { return [] }
        return Array(lines[(start + 1)...].prefix { !$0.hasPrefix("== ") })
    }
}
