import Synchronization

/// PostgreSQL did not answer in time (the pool may be waiting for a server that is down).
public struct ClusterTimeout: Error, CustomStringConvertible {
    public var seconds: Double
    public var description: String { "PostgreSQL did not answer within \(seconds) s" }
}

/// Runs `operation`, giving up after `seconds`: the caller then hears `ClusterTimeout` at once
/// and the operation is cancelled, but not waited for (a call into a connection pool whose
/// server went away may not end when cancelled; the caller must not hang with it).
func withDeadline<T: Sendable>(_ seconds: Double, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let race = DeadlineRace<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            race.begin(continuation)
            let work = Task {
                do { race.end(.success(try await operation())) } catch { race.end(.failure(error)) }
            }
            let timer = Task {
                try await Task.sleep(for: .seconds(seconds))
                if race.end(.failure(ClusterTimeout(seconds: seconds))) { work.cancel() }
            }
            race.started(work: work, timer: timer)
        }
    } onCancel: {
        race.cancel()
    }
}

/// Whichever of the operation, the timer and the caller's cancellation comes first ends the wait.
private final class DeadlineRace<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var work: Task<Void, Never>?
        var timer: Task<Void, any Error>?
        var ended = false
    }

    private let state = Mutex(State())

    func begin(_ continuation: CheckedContinuation<T, any Error>) {
        let cancelled = state.withLock { s -> Bool in
            if !s.ended { s.continuation = continuation }
            return s.ended
        }
        // The caller was cancelled before the wait began.
        if cancelled { continuation.resume(throwing: CancellationError()) }
    }

    func started(work: Task<Void, Never>, timer: Task<Void, any Error>) {
        let ended = state.withLock { s -> Bool in
            s.work = work
            s.timer = timer
            return s.ended
        }
        if ended {
            timer.cancel()
            work.cancel()
        }
    }

    /// Resumes the caller unless something else did; true when this call did.
    @discardableResult
    func end(_ result: Result<T, any Error>) -> Bool {
        let (continuation, timer) = state.withLock { s -> (CheckedContinuation<T, any Error>?, Task<Void, any Error>?) in
            guard !s.ended else { return (nil, nil) }
            s.ended = true
            defer { s.continuation = nil }
            return (s.continuation, s.timer)
        }
        guard let continuation else { return false }
        timer?.cancel()
        continuation.resume(with: result)
        return true
    }

    func cancel() {
        let work = state.withLock { $0.work }
        if end(.failure(CancellationError())) { work?.cancel() }
    }
}
