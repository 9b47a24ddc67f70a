import Logging
import NIOPosix
import SluiceCluster
import SluiceSpool

extension GatewayConfig {
    /// Runs `body` on the queue `sluice queue` works on: the file spool at `spool`, or with
    /// `[cluster]` the queue every node shares in PostgreSQL (changes there act at once on
    /// every node).
    public func withQueue<T: Sendable>(logger: Logger, _ body: (any QueueInspection) async throws -> T) async throws -> T {
        guard let cluster else { return try await body(FileQueueStore.inspecting(SpoolLayout(root: spool))) }
        return try await cluster.withClient(logger: logger) { client in
            let scratch = Spool(layout: SpoolLayout(root: spool), threadPool: .singleton, minFreeBytes: 0)
            let store = PostgresQueueStore(client: client, node: cluster.node, leaseSeconds: cluster.leaseSeconds, scratch: scratch, logger: logger)
            return try await body(store)
        }
    }
}
