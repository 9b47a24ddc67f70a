/// Where a session's stage calls run and how their timeouts are timed.
///
/// The server binds one per event loop (as the task-local `current`) around each phase, so a
/// stage that does not wait on I/O runs on the connection's own thread, with no hop to a
/// thread pool and back, and its timeout is a timer of that loop. Without a binding, stage calls
/// run on the global concurrent executor with sleeping tasks as timers.
public struct StageRunner: Sendable {
    /// The executor stage calls prefer (nil: the global concurrent executor).
    public let executor: (any TaskExecutor)?
    /// Calls the action after the delay unless the returned cancel function runs first.
    public let schedule: @Sendable (Duration, @escaping @Sendable () -> Void) -> @Sendable () -> Void

    public init(
        executor: (any TaskExecutor)?,
        schedule: @escaping @Sendable (Duration, @escaping @Sendable () -> Void) -> @Sendable () -> Void
    ) {
        self.executor = executor
        self.schedule = schedule
    }

    /// The global concurrent executor, with a sleeping task per timeout.
    public static let global = StageRunner(executor: nil) { delay, action in
        let timer = Task {
            try? await Task.sleep(for: delay)
            if !Task.isCancelled { action() }
        }
        return { timer.cancel() }
    }

    /// The runner of the current task.
    @TaskLocal public static var current: StageRunner = .global
}
