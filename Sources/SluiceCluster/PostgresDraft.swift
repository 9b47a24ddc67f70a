import NIOCore
import SluiceMessage
import SluiceSpool

/// A message being received by a node of a cluster. While it arrives it is a file-spool draft
/// on the node's own disk (small messages stay in memory; end-of-message stages read the body
/// from there); its commit writes content, envelope and trace into PostgreSQL in one
/// transaction, and only when that transaction has committed may the session answer 250.
final class PostgresDraft: QueueDraft {
    private let local: SpoolDraft
    private let store: PostgresQueueStore
    private let eventLoop: any EventLoop

    init(local: SpoolDraft, store: PostgresQueueStore, eventLoop: any EventLoop) {
        self.local = local
        self.store = store
        self.eventLoop = eventLoop
    }

    var id: String { local.id }
    var headerPrefix: [UInt8] { local.headerPrefix }
    var size: Int { local.size }
    var shouldFlush: Bool { local.shouldFlush }
    func append(_ chunk: ByteBuffer) { local.append(chunk) }
    func flush() -> EventLoopFuture<Void> { local.flush() }
    func lazyBody(from offset: Int) -> (body: MessageBody, settled: @Sendable () -> EventLoopFuture<Void>) { local.lazyBody(from: offset) }
    func discard() { local.discard() }

    func commit(_ commit: DraftCommit) -> EventLoopFuture<Void> {
        let (store, eventLoop) = (self.store, self.eventLoop)
        let state: PostgresQueueStore.State = commit.quarantine ? .quarantined : .queued
        return local.take(commit).flatMap { taken in
            let promise = eventLoop.makePromise(of: Void.self)
            promise.completeWithTask {
                try await store.insert(envelope: taken.envelope, content: taken.content, state: state)
            }
            return promise.futureResult
        }
    }
}
