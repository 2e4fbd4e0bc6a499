import ControlAPI
import Testing

/// The short reading of `kestrel run --api-sock PATH ...`: what it takes,
/// and everything it leaves to the full parse (nil).
@Suite(.timeLimit(.minutes(5))) struct APILaunchArgumentsTests {
    @Test func takesFirecrackersLaunchOptionsInEitherForm() throws {
        let plain = try #require(APILaunchArguments.parse(["--api-sock", "/tmp/a.sock"]))
        #expect(plain == APILaunchArguments(apiSocket: "/tmp/a.sock"))
        #expect(plain.id == "anonymous-instance" && !plain.noSeccomp && !plain.verbose && plain.seccompProbe == nil)
        let full = try #require(APILaunchArguments.parse(["--id", "vm-1", "--verbose", "--api-sock=/tmp/b.sock", "--no-seccomp",
                                                          "--seccomp-log", "--seccomp-probe=vcpu"]))
        #expect(full.apiSocket == "/tmp/b.sock" && full.id == "vm-1" && full.verbose && full.noSeccomp && full.seccompLog)
        #expect(full.seccompProbe == "vcpu")
    }

    @Test func leavesEverythingElseToTheFullParse() {
        let refused: [[String]] = [
            [],                                            // no socket: not an API launch
            ["--id", "vm"],
            ["--api-sock"],                                // a missing value
            ["--api-sock", "--verbose"],                   // a value that is an option
            ["--api-sock="],                               // an empty value
            ["--api-sock", "/a", "--api-sock", "/b"],      // repeated
            ["--api-sock", "/a", "--verbose", "--verbose"],
            ["--api-sock", "/a", "--help"],
            ["--api-sock", "/a", "-h"],
            ["--api-sock", "/a", "--kernel", "/vmlinux"],  // another option: a configured boot
            ["--api-sock", "/a", "--no-api"],
            ["--api-sock", "/a", "--verbose=yes"],         // a flag with a value
            ["--api-sock", "/a", "extra"],
        ]
        for arguments in refused {
            #expect(APILaunchArguments.parse(arguments) == nil, "\(arguments)")
        }
    }

    @Test func instanceIDsFollowFirecrackersRule() {
        for good in ["a", "vm-1", "ABC-def-123", String(repeating: "x", count: 64), "anonymous-instance"] {
            #expect(APILaunchArguments.isValidInstanceID(good), "\(good)")
        }
        for bad in ["", String(repeating: "x", count: 65), "vm 1", "vm_1", "vm.1", "vm/1", "vm\u{0}", "ümlaut"] {
            #expect(!APILaunchArguments.isValidInstanceID(bad), "\(bad)")
        }
        // The short path leaves a bad id to the full parse, which refuses it.
        #expect(APILaunchArguments.parse(["--api-sock", "/a", "--id", "vm 1"]) == nil)
        #expect(APILaunchArguments.parse(["--api-sock", "/a", "--id", "vm-1"])?.id == "vm-1")
    }

    @Test func aRepeatedOptionIsFound() {
        #expect(APILaunchArguments.repeatedOption(in: ["--api-sock", "/a", "--api-sock=/b"], repeatable: []) == "--api-sock")
        #expect(APILaunchArguments.repeatedOption(in: ["--id", "a", "--verbose", "--verbose"], repeatable: []) == "--verbose")
        #expect(APILaunchArguments.repeatedOption(in: ["--drive", "a", "--drive", "b", "--kernel", "k"], repeatable: ["--drive"]) == nil)
        #expect(APILaunchArguments.repeatedOption(in: ["--kernel", "k", "--", "--kernel"], repeatable: []) == nil)
        #expect(APILaunchArguments.repeatedOption(in: ["--kernel", "--kernel"], repeatable: []) == "--kernel")
    }
}
