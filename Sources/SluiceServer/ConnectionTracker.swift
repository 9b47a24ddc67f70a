import Synchronization

/// Counts open connections, in total and per client address, against
/// `[server] max_connections` and `max_connections_per_ip`.
public final class ConnectionTracker: Sendable {
    private struct State {
        var total = 0
        var perAddress: [String: Int] = [:]
    }
    private let state = Mutex(State())
    public let maxTotal: Int
    public let maxPerAddress: Int

    public init(maxTotal: Int, maxPerAddress: Int) {
        self.maxTotal = maxTotal
        self.maxPerAddress = maxPerAddress
    }

    /// Registers a connection; false (and nothing registered) when a limit is reached.
    public func open(_ address: String) -> Bool {
        state.withLock { s in
            let mine = s.perAddress[address, default: 0]
            guard s.total < maxTotal, mine < maxPerAddress else { return false }
            s.total += 1
            s.perAddress[address] = mine + 1
            return true
        }
    }

    public func close(_ address: String) {
        state.withLock { s in
            s.total -= 1
            let left = s.perAddress[address, default: 1] - 1
            s.perAddress[address] = left > 0 ? left : nil
        }
    }

    public var count: Int { state.withLock { $0.total } }
}
