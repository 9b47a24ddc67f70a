import ArgumentParser
import Foundation
import Logging
import SluiceCluster
import SluiceRuntime

/// `sluice cluster`: the nodes sharing a queue in PostgreSQL (`[cluster]`).
struct Cluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect the cluster of nodes sharing the queue in PostgreSQL ([cluster]).",
        subcommands: [Status.self]
    )

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Each node (name, last heartbeat, messages it holds claims on) and the queue's totals."
        )
        @OptionGroup var options: ConfigOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let config = try options.load()
            guard let cluster = config.cluster else { throw Failure("\(config.file) has no [cluster] table: this gateway is not a cluster node") }
            let logger = Logger(label: "sluice-cluster")
            let status: ClusterStatus
            do {
                try await cluster.check(migrate: false, logger: logger)
                status = try await cluster.withClient(logger: logger) { try await ClusterStatus.read($0, logger: logger) }
            } catch let problem as ClusterSettings.Problem {
                throw Failure("[cluster] \(problem)")
            } catch {
                throw Failure("[cluster] \(String(reflecting: error))")
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(status), as: UTF8.self))
                return
            }
            print("schema version: \(status.schemaVersion)")
            print("nodes: \(status.nodes.count)")
            for node in status.nodes {
                let when = Date(timeIntervalSince1970: node.heartbeat).formatted(.iso8601)
                print("  \(node.name)  heartbeat \(when) (\(Int(node.secondsSinceHeartbeat)) s ago)  claims \(node.claims)")
            }
            let q = status.queue
            print("queue: \(q.total) message(s): active \(q.active), deferred \(q.deferred), hold \(q.hold), quarantine \(q.quarantine)")
        }
    }
}
