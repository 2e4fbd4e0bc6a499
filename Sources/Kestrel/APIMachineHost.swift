import ControlAPI
import HostSystem
import VMM

/// `kestrel run --api-sock`: the API's `MicroVMControl`. The API thread asks
/// for a start; the main thread, waiting in `nextStart`, builds the machine
/// and answers through `started` or `failed`, then runs it. Pause and
/// resume go to the running `Machine`.
final class APIMachineHost: MicroVMControl, @unchecked Sendable {
    // @unchecked Sendable: every `var` is read and written only under `lock`.
    private let lock = ConditionLock()
    private var request: MachineConfiguration?
    private var answer: Result<Void, any Error>?
    private var machine: Machine?

    /// A host for a machine that is already running (started from flags or
    /// a configuration file).
    init(running machine: Machine? = nil) { self.machine = machine }

    func start(_ configuration: MachineConfiguration) throws {
        lock.withLockBroadcasting {
            request = configuration
            answer = nil
        }
        try lock.wait(until: { answer != nil }) {
            defer { answer = nil }
            try answer!.get()
        }
    }

    /// Blocks the main thread until the API asks for a start.
    func nextStart() -> MachineConfiguration {
        lock.wait(until: { request != nil }) {
            defer { request = nil }
            return request!
        }
    }

    func started(_ machine: Machine) {
        lock.withLockBroadcasting {
            self.machine = machine
            answer = .success(())
        }
    }

    func failed(_ error: any Error) {
        lock.withLockBroadcasting { answer = .failure(error) }
    }

    private var runningMachine: Machine {
        get throws {
            guard let machine = lock.withLock({ machine }) else { throw ConfigurationError("the microVM has not started") }
            return machine
        }
    }

    func pause() throws { try runningMachine.pause() }
    func resume() throws { try runningMachine.resume() }
}
