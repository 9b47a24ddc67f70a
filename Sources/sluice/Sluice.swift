import ArgumentParser
import Foundation
import Logging
import SluicePipeline
import SluiceCluster
import SluiceRuntime
import SluiceSpool
import SluiceStageAPI

@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "An SMTP gateway with a programmable stage pipeline.",
        subcommands: [Run.self, CheckConfig.self, Milter.self, Queue.self, Cluster.self, SPF.self, TLS.self, Passwd.self, DKIM.self]
    )
}

/// A command that could not do its work; printed as `Error: ...` without the usage text.
struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// `--config`, shared by every command.
struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "The pipeline configuration file.")
    var config = "pipeline.conf"

    func load() throws -> GatewayConfig {
        do {
            return try GatewayConfig.load(path: config)
        } catch let error as ConfigError {
            throw Failure("\(error)")
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start the gateway.")
    @OptionGroup var options: ConfigOption

    func run() async throws {
        let config = try options.load()
        config.bootstrapLogging()
        let logger = Logger(label: "sluice")
        do {
            let gateway = try Gateway(config: config, registry: StageRegistry(), logger: logger)
            try await gateway.run()
        } catch let error as ConfigError {
            throw Failure("\(error)")
        }
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate the configuration and print the resolved stage chain."
    )
    @OptionGroup var options: ConfigOption

    func run() async throws {
        let config = try options.load()
        var clusterLine: String?
        if let cluster = config.cluster {
            // The password and the schema are configuration; a server that is down is not.
            do {
                try await cluster.check(migrate: false, logger: Logger(label: "check-config"))
                clusterLine = "cluster: node \(cluster.node), PostgreSQL \(cluster.username)@\(cluster.host):\(cluster.port)/\(cluster.database), lease \(cluster.leaseSeconds) s"
            } catch let problem where problem.isConfigurationError {
                throw Failure("\(config.file): [cluster] \(problem)")
            } catch {
                clusterLine = "cluster: node \(cluster.node); \(error) (not a configuration error: the node waits for it)"
            }
        }
        let chain: StageChain
        do {
            chain = try StageRegistry().buildChain(config, logger: Logger(label: "check-config"))
        } catch let error as ConfigError {
            throw Failure("\(error)")
        }
        print("\(config.file): ok")
        print("hostname: \(config.hostname)")
        print("listeners: " + zip(config.listenerTexts, config.listeners).map { "\($0) (\($1.kind.rawValue))" }.joined(separator: ", "))
        print("tls: " + (config.tls.map { "certificate \($0.certificatePath), key \($0.keyPath)" } ?? "off"))
        print("spool: \(config.spool)" + (config.cluster == nil ? "" : " (drafts only: the queue is in PostgreSQL)"))
        if let clusterLine { print(clusterLine) }
        for route in config.routes {
            print("route: \(route.domains.joined(separator: ", ")) -> \(route.destination)")
        }
        let servers = config.dns.servers.map(\.description).joined(separator: ", ")
        print("dns: \(servers.isEmpty ? "servers of /etc/resolv.conf" : servers), timeout \(config.dns.timeout)"
              + (config.dns.trustAnchorFile.map { ", DNSSEC trust anchor \($0)" } ?? ""))
        let sizeLimit = min(config.maxMessageBytes, chain.messageSizeLimit ?? Int.max)
        print("message size limit: \(sizeLimit) octets")
        print("stages (\(chain.entries.count), in order):")
        for (i, entry) in chain.entries.enumerated() {
            let phases = entry.stage.phases.sorted().map(\.rawValue)
            print("  \(i + 1). \(entry.name) (use = \"\(entry.kind)\")")
            print("     phases: \(phases.isEmpty ? "none" : phases.joined(separator: ", "))")
            print("     capabilities: \(entry.stage.capabilities)")
            if chain.replaysData(entry.name) {
                print("     data: given at end of message, as the stages before it left the message (an earlier stage may edit it)")
            }
            if let limit = entry.stage.messageSizeLimit { print("     size limit: \(limit) octets (enforced while data streams)") }
            if !entry.stage.ehloKeywords.isEmpty { print("     EHLO keywords: \(entry.stage.ehloKeywords.joined(separator: ", "))") }
            print("     timeout: \(entry.timeout), on_error: \(entry.onError.rawValue)")
        }
    }
}

struct Queue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect the spool.",
        subcommands: [List.self, Show.self, Flush.self, Delete.self, Hold.self, Release.self]
    )

    /// Runs `body` on the queue of `--config`, whether the gateway runs or not: the file spool,
    /// or with `[cluster]` the queue every node shares in PostgreSQL.
    static func withStore<T: Sendable>(_ options: ConfigOption, _ body: (any QueueInspection) async throws -> T) async throws -> T {
        let config = try options.load()
        return try await config.withQueue(logger: Logger(label: "sluice-queue"), body)
    }

    /// One operation on one message (or, for flush, on all): the shape every changing command shares.
    protocol Operation: AsyncParsableCommand {
        var options: ConfigOption { get }
        /// The message operated on; nil for all (flush only).
        var target: String? { get }
        /// Does the work; returns what to print.
        static func perform(_ store: any QueueInspection, _ id: String?) async throws -> String
    }

    struct Flush: Operation {
        static let configuration = CommandConfiguration(
            abstract: "Attempt deferred mail now: all of it, or one message. The running gateway picks this up within a second."
        )
        @OptionGroup var options: ConfigOption
        @Argument(help: "A queue id (default: every deferred message).") var id: String?
        var target: String? { id }

        static func perform(_ store: any QueueInspection, _ id: String?) async throws -> String {
            try await store.requestFlush(id)
            return "flush requested\(id.map { " for \($0)" } ?? "")"
        }
    }

    struct Delete: Operation {
        static let configuration = CommandConfiguration(abstract: "Delete a message from the queue (or from hold or quarantine).")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The queue id.") var id: String
        var target: String? { id }

        static func perform(_ store: any QueueInspection, _ id: String?) async throws -> String {
            try await store.delete(id ?? "")
            return "\(id ?? ""): deleted"
        }
    }

    struct Hold: Operation {
        static let configuration = CommandConfiguration(abstract: "Put a queued message on hold: it is kept but not delivered.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The queue id.") var id: String
        var target: String? { id }

        static func perform(_ store: any QueueInspection, _ id: String?) async throws -> String {
            try await store.hold(id ?? "")
            return "\(id ?? ""): on hold"
        }
    }

    struct Release: Operation {
        static let configuration = CommandConfiguration(abstract: "Release a held or quarantined message into the queue and deliver it now.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The queue id.") var id: String
        var target: String? { id }

        static func perform(_ store: any QueueInspection, _ id: String?) async throws -> String {
            try await store.release(id ?? "")
            return "\(id ?? ""): released"
        }
    }

    /// A row of `sluice queue list --json`.
    struct Summary: Codable {
        var id: String
        var state: String
        var size: Int
        var receivedAt: Double
        var sender: String
        var recipients: [String]
        /// The node delivering it now (a cluster's queue only).
        var claimedBy: String?

        init(_ m: QueueListing) {
            claimedBy = m.claimedBy
            id = m.envelope.id
            state = m.state.rawValue
            size = m.envelope.size
            receivedAt = m.envelope.receivedAt
            sender = m.envelope.sender.description
            recipients = m.envelope.recipients.map { "<\($0.address)>" }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List queued (and quarantined) messages.")
        @OptionGroup var options: ConfigOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let rows = try await Queue.withStore(options) { try await $0.list() }.map(Summary.init)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(rows), as: UTF8.self))
                return
            }
            if rows.isEmpty {
                print("queue is empty")
                return
            }
            for r in rows {
                let when = Date(timeIntervalSince1970: r.receivedAt).formatted(.iso8601)
                let claim = r.claimedBy.map { "  (claimed by \($0))" } ?? ""
            print("\(r.id)\(r.state == "queued" ? "" : " [\(r.state)]")  \(r.size)  \(when)  \(r.sender)\(claim)")
                for rcpt in r.recipients { print("    \(rcpt)") }
            }
            print("\(rows.count) message(s)")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one message: envelope and stage trace.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The queue id.") var id: String

        func run() async throws {
            guard let found = try await Queue.withStore(options, { try await $0.show(id) }) else {
                throw Failure("no message \(id) in the queue")
            }
            let e = found.envelope
            print("id: \(e.id)")
            print("state: \(found.state.rawValue)")
            print("received: \(Date(timeIntervalSince1970: e.receivedAt).formatted(.iso8601)) from \(e.client.helo ?? "?") [\(e.client.address)]:\(e.client.port) with \(e.protocolName)")
            print("size: \(e.size)")
            print("sender: \(e.sender)\(e.senderParameters.isEmpty ? "" : " " + e.senderParameters.map(\.description).joined(separator: " "))")
            for r in e.recipients {
                print("recipient: <\(r.address)> -> \(r.destination)")
            }
            if let q = e.quarantine { print("quarantine: \(q)") }
            print("stage trace:")
            if e.trace.isEmpty { print("  (no stage ran)") }
            for t in e.trace { print("  \(t)") }
        }
    }
}

extension Queue.Operation {
    func run() async throws {
        let target = self.target
        do {
            print(try await Queue.withStore(options) { try await Self.perform($0, target) })
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure("\(error)")
        }
    }
}
