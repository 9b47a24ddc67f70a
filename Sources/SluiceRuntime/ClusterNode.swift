import Logging
import PostgresNIO
import ServiceLifecycle
import SluiceCluster
import SluiceSpool
import SluiceStageAPI

/// This gateway as a node of a cluster (`[cluster]`): the PostgreSQL client, the schema, and
/// the shared queue, whose drafts are received on the node's own spool.
final class ClusterNode: Sendable {
    let settings: ClusterSettings
    let client: PostgresClient
    let store: PostgresQueueStore
    /// Greylist triplets and rate-limit counters every node sees.
    let sharedState: PostgresSharedState
    let scratch: Spool
    let logger: Logger

    init(settings: ClusterSettings, scratch: Spool, logger: Logger) {
        var logger = logger
        logger[metadataKey: "node"] = "\(settings.node)"
        self.settings = settings
        self.scratch = scratch
        self.logger = logger
        // The pool logs each failed connection attempt at info: what matters is said once, by the store.
        var poolLogger = logger
        poolLogger.logLevel = max(logger.logLevel, .warning)
        client = PostgresClient(configuration: settings.clientConfiguration, backgroundLogger: poolLogger)
        store = PostgresQueueStore(client: client, node: settings.node, leaseSeconds: settings.leaseSeconds, scratch: scratch, logger: logger)
        sharedState = PostgresSharedState(client: client, logger: logger)
    }

    /// The first check of the settings: configuration errors stop the start.
    func prepare(configFile: String) async throws {
        do {
            try await settings.check(migrate: true, logger: logger)
        } catch let problem where problem.isConfigurationError {
            throw ConfigError(file: configFile, line: nil, key: "cluster", message: problem.description)
        } catch {
            logger.error("cluster: PostgreSQL is not there yet; mail is refused until it is", metadata: ["error": "\(error)"])
        }
        // What an earlier run left in the node's own spool (drafts cut short) goes.
        _ = try? scratch.recover(logger: logger)
    }

    /// The client's connection pool, and the node's work: the schema (until it is migrated),
    /// recovery of its own claims, then claiming due work for delivery.
    var services: [ServiceGroupConfiguration.ServiceConfiguration] {
        [.init(service: client), .init(service: NodeService(node: self))]
    }

    struct NodeService: Service {
        let node: ClusterNode

        func run() async throws {
            await cancelWhenGracefulShutdown {
                var failing = false
                while !Task.isCancelled {
                    do {
                        try await node.settings.check(migrate: true, logger: node.logger)
                        let due = try await node.store.recover(logger: node.logger)
                        node.logger.info("cluster: node joined", metadata: ["due": "\(due)", "lease_s": "\(node.settings.leaseSeconds)"])
                        break
                    } catch {
                        if !failing { node.logger.error("cluster: waiting for PostgreSQL", metadata: ["error": "\(error)"]) }
                        failing = true
                        try? await Task.sleep(for: .seconds(2))
                    }
                }
            }
            // Claims end when delivery stops (`finish()`, in delivery's shutdown); this service
            // ends with its own shutdown, which comes after (services stop in reverse order).
            await node.store.run()
            try? await gracefulShutdown()
        }
    }
}
