import Dispatch
import Synchronization

/// Runs async work (a stage chain phase) from a libmilter callback and blocks the calling thread
/// until it is done. libmilter gives every MTA connection a thread of its own and wants the
/// callback's answer as its return value; those threads are not Swift concurrency's cooperative
/// threads, so blocking them starves nothing. Never call this from a task.
func waitOnThread<T: Sendable>(_ work: @escaping @Sendable () async -> T) -> T {
    let done = DispatchSemaphore(value: 0)
    let result = ResultSlot<T>()
    Task {
        let value = await work()
        result.value.withLock { $0 = value }
        done.signal()
    }
    done.wait()
    return result.value.withLock { $0! }
}

private final class ResultSlot<T: Sendable>: Sendable {
    let value = Mutex<T?>(nil)
}
