import NIOCore
import SluicePipeline

/// A task executor that runs jobs on one event loop's thread.
final class EventLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

extension StageRunner {
    /// Stage calls on `loop`'s thread, timed by `loop`'s timers.
    static func on(_ loop: any EventLoop) -> StageRunner {
        StageRunner(executor: EventLoopTaskExecutor(loop)) { delay, action in
            let (seconds, attoseconds) = delay.components
            let nanos = seconds.multipliedReportingOverflow(by: 1_000_000_000)
            let amount = TimeAmount.nanoseconds(nanos.overflow ? .max : nanos.partialValue + attoseconds / 1_000_000_000)
            let scheduled = loop.scheduleTask(in: amount) { action() }
            return { scheduled.cancel() }
        }
    }

    /// Runs `work` on this runner (bound as `StageRunner.current`) and completes the returned
    /// future on `loop` with its result.
    func run<T: Sendable>(on loop: any EventLoop, _ work: @escaping @Sendable () async -> T) -> EventLoopFuture<T> {
        let promise = loop.makePromise(of: T.self)
        Task(executorPreference: executor) {
            promise.succeed(await StageRunner.$current.withValue(self) { await work() })
        }
        return promise.futureResult
    }
}
