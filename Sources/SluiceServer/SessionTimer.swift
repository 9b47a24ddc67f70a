import NIOCore

/// A session's one timer: the command or the data timeout, counted from the last input. Input
/// only moves `lastInput`; a timer that fires early is armed again for the rest.
struct SessionTimer {
    private var lastInput = NIODeadline.now()
    private var scheduled: Scheduled<Void>?

    mutating func inputArrived() {
        lastInput = .now()
    }

    /// True when no input came for `limit`.
    func expired(after limit: TimeAmount) -> Bool {
        NIODeadline.now() >= lastInput + limit
    }

    /// Calls `fire` on `loop` once `limit` has passed since the last input (replacing any earlier arming).
    mutating func arm(after limit: TimeAmount, on loop: any EventLoop, fire: @escaping @Sendable () -> Void) {
        scheduled?.cancel()
        scheduled = loop.scheduleTask(deadline: lastInput + limit, fire)
    }

    mutating func cancel() {
        scheduled?.cancel()
        scheduled = nil
    }
}
