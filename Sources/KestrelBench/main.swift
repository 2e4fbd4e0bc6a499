import CBenchLoop
import Foundation
import GuestKit
import KVM

// kestrel-bench: release benchmarks with baselines measured in the same run.
//
//   swift run -c release kestrel-bench [--exits N] [--rounds N] [--check-runs N]
//   swift run -c release kestrel-bench snp-load [--duration-ms N] [--no-lock] ...
//   swift run -c release kestrel-bench snp-fuzz [--inputs N] [--seed N]

struct Options {
    var exits = 100_000
    var rounds = 7
    var checkRuns = 5

    init(_ arguments: [String]) throws {
        var iterator = arguments.makeIterator()
        while let argument = iterator.next() {
            func value(minimum: Int = 1) throws -> Int {
                guard let text = iterator.next(), let number = Int(text), number >= minimum else {
                    throw BenchError("\(argument) needs a whole number of at least \(minimum)")
                }
                return number
            }
            switch argument {
            case "--exits": exits = try value()
            case "--rounds": rounds = try value()
            case "--check-runs": checkRuns = try value(minimum: 0)
            case "-h", "--help":
                print("usage: kestrel-bench [--exits N (100000)] [--rounds N (7)] [--check-runs N (5), 0 to skip]")
                print("       kestrel-bench snp-load --help | snp-fuzz --help")
                exit(0)
            default: throw BenchError("unknown argument \(argument); see --help")
            }
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

func format(_ value: Double, _ digits: Int = 3) -> String { String(format: "%.\(digits)f", value) }

/// The guest: an endless `out 0x80, al` loop, so every KVM_RUN is one exit.
func makeMachine(kvm: KVMSystem) throws -> GuestMachine {
    let program = GuestProgram()
    let a = program.assembler
    a.mov(.rax, 7)
    let loop = a.here()
    a.outb(port: 0x80)
    a.jmp(loop)
    let machine = try GuestMachine(kvm: kvm)
    try machine.loadLongMode(program)
    return machine
}

func swiftRound(_ vcpu: VCPU, exits: Int, checksum: inout UInt64) throws {
    for _ in 0..<exits {
        guard case .io(let io) = try vcpu.run(), io.port == 0x80, io.direction == .out else {
            throw BenchError("unexpected exit in the Kestrel loop")
        }
        checksum &+= UInt64(io.data[0])
    }
}

func cRound(_ vcpu: VCPU, exits: Int, checksum: inout UInt64) throws {
    guard cbench_io_round_trips(vcpu.fileDescriptor, vcpu.runArea.address, 0x80, exits, &checksum) == exits else {
        throw BenchError("unexpected exit in the C loop")
    }
}

func exitRoundTrip(_ options: Options) throws {
    let kvm = try KVMSystem()
    let machine = try makeMachine(kvm: kvm)
    let vcpu = machine.vcpu
    var checksum: UInt64 = 0
    print("Exit round trip: guest OUT to port 0x80, host handles each exit")
    print("  \(options.exits) exits per round, \(options.rounds) rounds per loop, interleaved, after one warm-up round each")
    try swiftRound(vcpu, exits: options.exits / 10, checksum: &checksum)
    try cRound(vcpu, exits: options.exits / 10, checksum: &checksum)
    var swiftRates: [Double] = []
    var cRates: [Double] = []
    for round in 0..<options.rounds {
        // Alternate which loop goes first, so drift affects both alike.
        let order: [Bool] = round % 2 == 0 ? [true, false] : [false, true]
        for isSwift in order {
            let time = try seconds {
                if isSwift { try swiftRound(vcpu, exits: options.exits, checksum: &checksum) } else { try cRound(vcpu, exits: options.exits, checksum: &checksum) }
            }
            (isSwift ? { swiftRates.append(Double(options.exits) / time) } : { cRates.append(Double(options.exits) / time) })()
        }
    }
    let expected = UInt64(7) * UInt64(options.exits / 10 * 2 + options.exits * options.rounds * 2)
    guard checksum == expected else { throw BenchError("checksum \(checksum) != \(expected): exits were lost") }
    let swiftMedian = median(swiftRates)
    let cMedian = median(cRates)
    print("  Kestrel VCPU.run() loop: median \(Int(swiftMedian)) exits/s  (min \(Int(swiftRates.min()!)), max \(Int(swiftRates.max()!)))")
    print("  C KVM_RUN loop:          median \(Int(cMedian)) exits/s  (min \(Int(cRates.min()!)), max \(Int(cRates.max()!)))")
    print("  ratio Kestrel/C (median rates): \(format(swiftMedian / cMedian))   goal: >= 0.950")
    print("  per exit: Kestrel \(format(1e6 / swiftMedian, 2)) us, C \(format(1e6 / cMedian, 2)) us")
}

func checkWallTime(_ options: Options) throws {
    let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    let kestrel = directory.appendingPathComponent("kestrel")
    guard FileManager.default.isExecutableFile(atPath: kestrel.path) else {
        print("kestrel check wall time: skipped (no kestrel binary beside this one; run `swift build -c release` first)")
        return
    }
    var times: [Double] = []
    var lastStatus: Int32 = 0
    var lastSummary = ""
    for _ in 0..<options.checkRuns {
        let process = Process()
        process.executableURL = kestrel
        process.arguments = ["check"]
        let pipe = Pipe()
        process.standardOutput = pipe
        let time = try seconds {
            try process.run()
            let output = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            lastSummary = String(decoding: output, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
        }
        lastStatus = process.terminationStatus
        times.append(time)
    }
    print("kestrel check (release binary), \(options.checkRuns) runs: median \(format(median(times))) s, min \(format(times.min()!)) s, max \(format(times.max()!)) s   goal: < 5 s")
    print("  last run: \(lastSummary) (exit status \(lastStatus))")
}

do {
    let arguments = Array(CommandLine.arguments.dropFirst())
    switch arguments.first {
    case "snp-load":
        try snpLoad(Array(arguments.dropFirst()))
        exit(0)
    case "snp-fuzz":
        try snpFuzz(Array(arguments.dropFirst()))
        exit(0)
    case "snp-writer":
        try snpWriter(Array(arguments.dropFirst()))
        exit(0)
    default: break
    }
    let options = try Options(arguments)
    #if DEBUG
    print("note: this is a debug build; run `swift run -c release kestrel-bench` for meaningful figures")
    #endif
    try exitRoundTrip(options)
    if options.checkRuns > 0 { try checkWallTime(options) }
} catch {
    FileHandle.standardError.write(Data("kestrel-bench: \(error)\n".utf8))
    exit(1)
}
