import Synchronization

/// Work that many callers ask for and one statement can do for all of them: while one run is
/// on its way to PostgreSQL, the items submitted meanwhile wait and go together in the next
/// (one round trip and one commit for many messages under load, no waiting when idle).
final class GroupCommit<Item: Sendable>: Sendable {
    private struct Waiting {
        var item: Item
        var done: CheckedContinuation<Void, any Error>?
    }

    private struct State {
        var waiting: [Waiting] = []
        var running = false
    }

    private let state = Mutex(State())
    private let run: @Sendable ([Item]) async throws -> Void

    /// - Parameter run: does the work of a batch; all its callers hear how it ended.
    init(_ run: @escaping @Sendable ([Item]) async throws -> Void) {
        self.run = run
    }

    /// Adds `item` to the next run and returns when that run has ended (rethrowing its error).
    func submit(_ item: Item) async throws {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
            enqueue(Waiting(item: item, done: done))
        }
    }

    /// Adds `item` to the next run without waiting for it.
    func post(_ item: Item) {
        enqueue(Waiting(item: item, done: nil))
    }

    private func enqueue(_ waiting: Waiting) {
        let start = state.withLock { s -> Bool in
            s.waiting.append(waiting)
            guard !s.running else { return false }
            s.running = true
            return true
        }
        if start { Task { await self.drain() } }
    }

    private func drain() async {
        while true {
            let batch = state.withLock { s -> [Waiting] in
                let batch = s.waiting
                s.waiting = []
                if batch.isEmpty { s.running = false }
                return batch
            }
            if batch.isEmpty { return }
            do {
                try await run(batch.map(\.item))
                for w in batch { w.done?.resume() }
            } catch {
                for w in batch { w.done?.resume(throwing: error) }
            }
        }
    }
}
