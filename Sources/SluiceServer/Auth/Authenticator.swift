import Synchronization

/// Checks a user name and password (SMTP AUTH). Called on a thread pool: it may block.
public protocol Authenticator: Sendable {
    func verify(user: String, password: String) -> Bool
}

/// Authentication failures per client address within a window (`[auth] max_failures`,
/// `failure_window_s`): each failure is answered after a growing delay, and past the limit
/// the client is disconnected with 421 (and refused at once until the window passes).
public final class AuthFailureTracker: Sendable {
    public let maxFailures: Int
    public let window: Duration
    public let delay: Duration
    private let failures = Mutex<[String: (count: Int, since: ContinuousClock.Instant)]>([:])

    public init(maxFailures: Int = 5, window: Duration = .seconds(900), delay: Duration = .seconds(1)) {
        self.maxFailures = maxFailures
        self.window = window
        self.delay = delay
    }

    /// Failures counted for `address` now.
    public func count(_ address: String) -> Int {
        failures.withLock { map in
            guard let entry = map[address] else { return 0 }
            if ContinuousClock.now - entry.since > window {
                map[address] = nil
                return 0
            }
            return entry.count
        }
    }

    /// Records a failure; returns the count including it.
    public func fail(_ address: String) -> Int {
        failures.withLock { map in
            let now = ContinuousClock.now
            var entry = map[address] ?? (0, now)
            if now - entry.since > window { entry = (0, now) }
            entry.count += 1
            map[address] = entry
            if map.count > 100_000 { map = map.filter { now - $0.value.since <= window } }
            return entry.count
        }
    }

    /// How long to hold back the reply to the `count`-th failure.
    public func delay(after count: Int) -> Duration { delay * min(count, 10) }
}
