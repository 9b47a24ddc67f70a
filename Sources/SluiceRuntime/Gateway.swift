import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import UnixSignals
import SluiceCluster
import SluiceDNS
import SluicePipeline
import SluiceServer
import SluiceDelivery
import SluiceSpool
import SluiceStageAPI

/// The whole gateway: the SMTP listeners and the delivery agent, meeting only at the queue.
public final class Gateway: Sendable {
    public let config: GatewayConfig.Resolved
    public let chain: StageChain
    let queue: any QueueStore
    /// The file spool, without `[cluster]`.
    let fileQueue: FileQueueStore?
    /// The shared queue in PostgreSQL, with `[cluster]`.
    let cluster: ClusterNode?
    let delivery: DeliveryAgent
    let server: SMTPServer
    let threadPool: NIOThreadPool
    let logger: Logger
    /// The one DNS resolver (`[dns]`) of stages and delivery.
    public let resolver: any DNSResolver
    /// `[tls]`: reloaded on SIGHUP.
    let tls: ServerTLS?

    public init(config: GatewayConfig, registry: StageRegistry, logger: Logger) throws {
        self.logger = logger
        self.config = config.resolved
        resolver = try config.makeResolver()
        threadPool = NIOThreadPool(numberOfThreads: config.deliveryConcurrency + 32)
        threadPool.start()
        let spool = Spool(layout: SpoolLayout(root: config.spool), threadPool: threadPool, minFreeBytes: UInt64(config.minFreeBytes))
        let queue: any QueueStore
        if let settings = config.cluster {
            let node = ClusterNode(settings: settings, scratch: spool, logger: logger)
            (cluster, fileQueue, queue) = (node, nil, node.store)
        } else {
            let file = FileQueueStore(spool: spool)
            (cluster, fileQueue, queue) = (nil, file, file)
        }
        self.queue = queue
        chain = try registry.buildChain(config, logger: logger, resolver: resolver, sharedState: cluster?.sharedState)
        var deliveryLogger = logger
        deliveryLogger[metadataKey: "component"] = "delivery"
        let routes = RouteTable(config.routes)
        let relay = try RelayClient(
            hostname: config.hostname, group: MultiThreadedEventLoopGroup.singleton, threadPool: threadPool,
            timeouts: config.relayTimeouts, connectionsPerDestination: config.queue.destinationConcurrency,
            tlsSettings: config.relayTLS, defaultTLSSettings: config.mxTLS, logger: deliveryLogger
        )
        let delivery = DeliveryAgent(
            store: queue, threadPool: threadPool, hostname: config.hostname, relay: relay, policy: config.queue,
            concurrency: config.deliveryConcurrency, resolver: resolver,
            route: { try? routes.destination(for: $0, trusted: true).get() }, logger: deliveryLogger
        )
        self.delivery = delivery

        if let settings = config.tls {
            do {
                tls = try ServerTLS(settings: settings)
            } catch {
                throw ConfigError(file: config.file, line: nil, key: "tls", message: "\(error)")
            }
        } else {
            tls = nil
        }
        let tls = self.tls
        var auth: AuthSettings?
        var senderLogin: SenderLoginMap?
        if let a = config.auth {
            do {
                let users = try PasswdFile(path: a.usersFile, logger: logger)
                auth = AuthSettings(
                    authenticator: users,
                    failures: AuthFailureTracker(
                        maxFailures: a.maxFailures, window: .seconds(a.failureWindowSeconds), delay: .milliseconds(a.failureDelayMilliseconds)
                    ),
                    offerOnSMTP: a.offerOnSMTP
                )
                if let path = a.senderLoginFile {
                    guard let text = PasswdFile.read(path) else { throw PasswdFile.Error(description: "cannot read \(path)") }
                    senderLogin = SenderLoginMap(text: text)
                }
            } catch {
                throw ConfigError(file: config.file, line: nil, key: "auth", message: "\(error)")
            }
        }
        var session = SessionConfiguration(hostname: config.hostname, routes: routes)
        session.maxRecipients = config.maxRecipients
        session.maxErrors = config.maxErrors
        session.maxMessageBytes = min(config.maxMessageBytes, chain.messageSizeLimit ?? Int.max)
        session.disconnectOnPipeliningViolation = config.disconnectOnPipeliningViolation
        session.stageKeywords = chain.ehloKeywords
        session.hookedPhases = Set(StagePhase.allCases.filter(chain.hooks))
        session.makeQueueID = QueueID.make
        session.hasFreeSpace = { queue.hasFreeSpace() }
        session.queueAvailable = { queue.isAvailable }
        if let senderLogin { session.senderLogin = { senderLogin.allows(user: $0, sender: $1) } }
        if let failures = auth?.failures { session.authBlocked = { failures.count($0) >= failures.maxFailures } }
        session.offersETRN = !config.etrnFrom.isEmpty
        var smtpLogger = logger
        smtpLogger[metadataKey: "component"] = "smtpd"
        let context = ServerContext(
            session: session, chain: chain, queue: queue, threadPool: threadPool,
            tracker: ConnectionTracker(maxTotal: config.maxConnections, maxPerAddress: config.maxConnectionsPerIP),
            logger: smtpLogger, relayFrom: config.relayFrom, etrnFrom: config.etrnFrom,
            commandTimeout: .seconds(Int64(config.commandTimeoutSeconds)), dataTimeout: .seconds(Int64(config.dataTimeoutSeconds)),
            greetPause: .milliseconds(Int64(config.greetPauseMilliseconds)),
            commandLineLimit: config.commandLineLimit, textLineLimit: config.textLineLimit, tls: tls, auth: auth
        )
        server = SMTPServer(context: context, listeners: config.listeners, group: MultiThreadedEventLoopGroup.singleton)
    }

    /// Recovers the spool, binds the listeners, and runs until SIGTERM/SIGINT; then stops
    /// accepting, lets open transactions finish (bounded), drains delivery and returns.
    public func run() async throws {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let cluster {
            // A wrong password or a too-new schema stops the start; a server that is not up yet
            // does not: the node waits for it (and refuses mail until it is there).
            try await cluster.prepare(configFile: config.file)
            services += cluster.services
        } else if let fileQueue {
            let queued = try await fileQueue.recover(logger: logger)
            if queued > 0 { logger.info("recovered queued messages", metadata: ["count": "\(queued)"]) }
            services.append(.init(service: QueueControlService(queue: fileQueue)))
        }
        let started: Logger.Metadata = [
            "hostname": "\(config.hostname)", "stages": "\(chain.entries.map(\.name).joined(separator: ","))",
            "tls": "\(tls.map { "on (\($0.settings.certificatePath))" } ?? "off (no [tls] in the config)")",
        ]
        let smtp = SMTPService(server: server, grace: .seconds(config.shutdownGraceSeconds), logger: logger, started: started)
        let deliveryService = DeliveryService(agent: delivery, queue: queue)
        let reload = ReloadService(tls: tls, logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: services + [.init(service: deliveryService), .init(service: reload), .init(service: smtp)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
        try await threadPool.shutdownGracefully()
        logger.info("sluice stopped")
    }
}

extension GatewayConfig {
    /// The one resolver of `[dns]` (libunbound), for the stages and delivery; a `[dns]` it cannot
    /// use is a config error naming the table.
    public func makeResolver() throws -> any DNSResolver {
        do {
            return try UnboundResolver(configuration: dns)
        } catch let error as DNSError {
            throw ConfigError(file: file, line: nil, key: "dns", message: error.message)
        }
    }

    /// The few settings the running gateway keeps.
    public struct Resolved: Sendable {
        public var file: String
        public var hostname: String
        public var shutdownGraceSeconds: Int
    }

    var resolved: Resolved { Resolved(file: file, hostname: hostname, shutdownGraceSeconds: shutdownGraceSeconds) }
}

/// The listeners as a service: on graceful shutdown, stop accepting and drain sessions.
/// It binds inside the service group, whose signal handlers are then in place: a SIGTERM sent
/// as soon as the port answers is a graceful shutdown, never the default action.
struct SMTPService: Service {
    let server: SMTPServer
    let grace: Duration
    let logger: Logger
    let started: Logger.Metadata

    func run() async throws {
        let listeners = try await server.bind()
        logger.info("sluice started", metadata: started)
        try? await gracefulShutdown()
        await server.shutdown(listeners: listeners, grace: grace)
    }
}

/// SIGHUP: reads the TLS certificate and key again. Sessions already running keep theirs; a
/// certificate that cannot be loaded is logged and the old one stays.
struct ReloadService: Service {
    let tls: ServerTLS?
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            guard let tls else {
                logger.notice("SIGHUP: nothing to reload (no [tls])")
                continue
            }
            do {
                try tls.reload()
                logger.notice("SIGHUP: TLS certificate reloaded", metadata: ["certificate": "\(tls.settings.certificatePath)"])
            } catch {
                logger.error("SIGHUP: TLS certificate not reloaded, the old one stays", metadata: ["error": "\(error)"])
            }
        }
    }
}

/// Delivery as a service: stops after the SMTP side has (services stop in reverse order).
struct DeliveryService: Service {
    let agent: DeliveryAgent
    let queue: any QueueStore

    func run() async throws {
        await withGracefulShutdownHandler {
            await agent.run()
        } onGracefulShutdown: {
            queue.finish()
        }
    }
}

/// Polls `spool/control/` for `sluice queue flush`/`release` requests (every 250 ms).
struct QueueControlService: Service {
    let queue: FileQueueStore

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            queue.takeControlRequests()
            try? await Task.sleep(for: .milliseconds(250))
        }
    }
}
