import SluiceStageAPI
import Synchronization

/// Recent `check_host()` results, each kept no longer than the shortest TTL of the DNS answers
/// it was computed from, so a cached result is never older than the data a fresh check would
/// read. A sender that sends many messages in a row costs one evaluation.
final class SPFResultCache: Sendable {
    struct Key: Hashable {
        var identity: SPFIdentity
        var ip: [UInt8]
        var domain: String
        var sender: String
        var helo: String
    }

    struct Entry {
        var found: SPFCheck.Found
        var expires: ContinuousClock.Instant
    }

    private let capacity: Int
    private let entries = Mutex<[Key: Entry]>([:])

    /// - Parameter capacity: results kept at most; 0 keeps none.
    init(capacity: Int) { self.capacity = capacity }

    func found(for key: Key) -> SPFCheck.Found? {
        guard capacity > 0 else { return nil }
        let now = ContinuousClock.now
        return entries.withLock { e in
            guard let entry = e[key] else { return nil }
            guard entry.expires > now else {
                e[key] = nil
                return nil
            }
            return entry.found
        }
    }

    /// Keeps `found` for `ttl` seconds; temporary errors and results without a TTL are not kept.
    func store(_ found: SPFCheck.Found, ttl: Int?, for key: Key) {
        guard capacity > 0, let ttl, ttl > 0, found.result != .temperror else { return }
        let now = ContinuousClock.now
        entries.withLock { e in
            if e.count >= capacity {
                e = e.filter { $0.value.expires > now }
                if e.count >= capacity { e.removeAll(keepingCapacity: true) }
            }
            e[key] = Entry(found: found, expires: now + .seconds(ttl))
        }
    }
}
