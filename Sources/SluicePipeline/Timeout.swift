/// The stage did not answer within its timeout.
struct StageTimeout: Error {}

/// Runs `body`, giving up after `timeout`. The body is cancelled when the time runs out; a body
/// that ignores cancellation is left to finish in the background, but the caller is not held.
/// The body runs on `StageRunner.current`'s executor and the timer is one of its timers.
func withTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let race = RaceBox<T>()
    let runner = StageRunner.current
    return try await withCheckedThrowingContinuation { continuation in
        race.arm(continuation)
        let work = Task(executorPreference: runner.executor) {
            do { race.resolve(.success(try await body())) } catch { race.resolve(.failure(error)) }
        }
        let cancelTimer = runner.schedule(timeout) {
            if race.resolve(.failure(StageTimeout())) { work.cancel() }
        }
        race.onResolve(cancelTimer)
    }
}

import Synchronization

/// Resolves a continuation exactly once, whichever of the work and the timer finishes first.
private final class RaceBox<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var done = false
        var cleanup: (@Sendable () -> Void)?
    }
    private let state = Mutex(State())

    func arm(_ c: CheckedContinuation<T, any Error>) { state.withLock { $0.continuation = c } }

    func onResolve(_ f: @escaping @Sendable () -> Void) {
        let runNow = state.withLock { s -> Bool in
            if s.done { return true }
            s.cleanup = f
            return false
        }
        if runNow { f() }
    }

    @discardableResult
    func resolve(_ result: Result<T, any Error>) -> Bool {
        let (c, cleanup) = state.withLock { s -> (CheckedContinuation<T, any Error>?, (@Sendable () -> Void)?) in
            if s.done { return (nil, nil) }
            s.done = true
            defer { s.continuation = nil; s.cleanup = nil }
            return (s.continuation, s.cleanup)
        }
        guard let c else { return false }
        c.resume(with: result)
        cleanup?()
        return true
    }
}
