import Confidential
import HostSystem
import KVM

/// Runs an `SNPBootPlan` through the SEV calls, in the firmware's order:
/// all RAM private (KVM_SET_MEMORY_ATTRIBUTES), SNP_LAUNCH_START, one
/// SNP_LAUNCH_UPDATE per planned range in ascending address order, the vCPUs
/// created and their registers set, the expected measurement announced, then
/// SNP_LAUNCH_FINISH (where KVM measures each vCPU's VMSA). The payload must
/// already be in the launch source buffer.
public enum SNPLaunchSequence {
    /// Why a launch stopped, with the step it stopped at.
    public struct Failure: Error, CustomStringConvertible {
        public let step: String
        public let reason: String
        public var description: String { "SEV-SNP launch failed at \(step): \(reason)" }
    }

    /// - Parameters:
    ///   - createVCPUs: creates every vCPU and sets its state (between the updates and FINISH).
    ///   - announce: receives the expected measurement, before SNP_LAUNCH_FINISH.
    public static func run(_ plan: SNPBootPlan, measurement: SNPLaunchDigest, on launch: SNPLaunchOperations,
                           hostData: [UInt8] = [], createVCPUs: () throws -> Void, announce: (String) -> Void) throws {
        func step<T>(_ name: String, _ body: () throws -> T) throws -> T {
            do { return try body() } catch let failure as Failure { throw failure } catch { throw Failure(step: name, reason: "\(error)") }
        }
        try step("KVM_SET_MEMORY_ATTRIBUTES (all RAM private)") { try launch.setPrivate(0..<plan.memorySize) }
        try step("KVM_SEV_SNP_LAUNCH_START") { try launch.start(policy: plan.policy) }
        for update in plan.updates {
            try step("KVM_SEV_SNP_LAUNCH_UPDATE \(update.description)") {
                do {
                    try launch.update(guestPhysicalAddress: update.range.lowerBound, length: UInt64(update.range.count), type: update.type)
                } catch let error as SEVCommandError where update.type == .cpuid && error.errno == .ioError {
                    throw Failure(step: "KVM_SEV_SNP_LAUNCH_UPDATE \(update.description)",
                                  reason: cpuidRejection(sent: plan.cpuidPage, returned: launch.sourceContents(at: update.range.lowerBound, length: SNPCPUIDPage.size), error: error))
                }
            }
        }
        try step("vCPU creation") { try createVCPUs() }
        announce("kestrel: SEV-SNP expected launch measurement \(measurement.hex) (\(plan.updates.count) updates, \(plan.vmsas.count) VMSA page\(plan.vmsas.count == 1 ? "" : "s"))")
        try step("KVM_SEV_SNP_LAUNCH_FINISH") { try launch.finish(hostData: hostData) }
    }

    /// The firmware refused the CPUID page: KVM copied its corrected page back
    /// into the source buffer. Says which leaves it changed.
    static func cpuidRejection(sent: SNPCPUIDPage, returned: [UInt8], error: SEVCommandError) -> String {
        let changes: [String]
        do { changes = sent.differences(from: try SNPCPUIDPage(parsing: returned)) } catch {
            return "the firmware rejected the CPUID page (\(error)), and the page KVM returned cannot be read: \(error)"
        }
        return "the firmware rejected the CPUID page (\(error)); it changed "
            + (changes.isEmpty ? "nothing Kestrel can see" : changes.prefix(8).joined(separator: "; ") + (changes.count > 8 ? "; and \(changes.count - 8) more" : ""))
    }
}
