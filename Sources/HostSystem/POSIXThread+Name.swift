#if canImport(Glibc)
import Glibc
#endif
import CHost

/// The key under which each thread keeps the name it gave itself: read
/// without a system call, so that any thread may log under any seccomp list
/// (prctl(PR_GET_NAME) is in none of them).
private let threadNameKey: pthread_key_t = {
    var key = pthread_key_t()
    // Sound: the key lives for the process; a thread's value is a strdup'd
    // string, freed by the destructor when the thread ends.
    precondition(pthread_key_create(&key, { free($0) }) == 0, "pthread_key_create")
    return key
}()

extension POSIXThread {
    /// Names the calling thread for log lines (not the kernel's comm name).
    public static func setCurrentName(_ name: String) {
        let old = pthread_getspecific(threadNameKey)
        // Sound: the stored pointer is a C string this thread owns.
        pthread_setspecific(threadNameKey, strdup(name))
        free(old)
    }

    /// Sets the calling thread's name as the kernel shows it (/proc/PID/task/TID/comm,
    /// prctl(PR_SET_NAME)): at most 15 bytes are kept.
    public static func setKernelName(_ name: String) {
        // Sound: the string is a NUL-terminated copy that lives through the call.
        _ = name.withCString { chost_set_thread_name($0) }
    }

    /// The name the calling thread gave itself; "main" for the process's
    /// first thread when it gave none; nil otherwise.
    public static var currentName: String? {
        if let pointer = pthread_getspecific(threadNameKey) {
            return String(cString: pointer.assumingMemoryBound(to: CChar.self))
        }
        return chost_gettid() == getpid() ? "main" : nil
    }
}
