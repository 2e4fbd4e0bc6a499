import GuestKit
import KVM

/// A guest that performs a list of MSR reads and writes, each under an armed
/// exception fixup, and reports after each one with SYNC(stage, value read).
/// The host sees, per step, an optional exception report and then the SYNC.
struct GuestMSRProbe {
    enum Access {
        case read(UInt32)
        case write(UInt32, UInt64)
        /// A WRMSR behind the forced-emulation prefix: KVM's instruction
        /// emulator performs it, whatever the MSR intercepts say (needs
        /// kvm.force_emulation_prefix).
        case emulatedWrite(UInt32, UInt64)
    }

    /// What one step produced.
    struct Outcome {
        let exception: GuestException?
        /// EDX:EAX after a read (0 when it faulted).
        let value: UInt64
    }

    let steps: [Access]

    /// Emits the guest code for the steps, then DONE.
    func emit(into program: GuestProgram) {
        let a = program.assembler
        for (stage, step) in steps.enumerated() {
            switch step {
            case .read(let index):
                a.mov(.rcx, UInt64(index))
                a.mov(.rax, 0)
                a.mov(.rdx, 0)
                program.expectingException { a.rdmsr() }
                a.shl(.rdx, 32)
                a.or(.rax, .rdx)
            case .write(let index, let value), .emulatedWrite(let index, let value):
                a.mov(.rcx, UInt64(index))
                a.mov(.rax, value & 0xFFFF_FFFF)
                a.mov(.rdx, value >> 32)
                program.expectingException {
                    if case .emulatedWrite = step { a.forcedEmulationPrefix() }
                    a.wrmsr()
                }
                a.mov(.rax, 0)
            }
            program.sync(stage: UInt64(stage), .reg(.rax))
        }
        program.done()
    }

    /// Runs the next step on the host side.
    static func next(_ machine: GuestMachine, stage: Int) throws -> Outcome {
        let (exception, values) = try machine.runToSync(stage: UInt64(stage))
        guard let value = values.first else { throw TestFailure("SYNC(stage \(stage)) carried no value") }
        return Outcome(exception: exception, value: value)
    }

    /// Describes an exception outcome for messages.
    static func describe(_ exception: GuestException?) -> String {
        exception.map { "\($0)" } ?? "no exception"
    }
}
