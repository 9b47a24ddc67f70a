import Logging
import NIOCore
import NIOPosix
import SluicePipeline
import SluiceSpool
import SluiceStageAPI
import Synchronization

/// What every session shares: configuration, the chain, and the queue (the only thing shared with delivery).
public final class ServerContext: Sendable {
    public let session: SessionConfiguration
    public let chain: StageChain
    /// Drafts are written into it, and each committed message is announced to it after its 250.
    public let queue: any QueueStore
    /// Runs the sessions' blocking calls (password checks, reading stages' replacement bodies).
    public let threadPool: NIOThreadPool
    public let tracker: ConnectionTracker
    public let logger: Logger
    /// `[server] relay_from`.
    public let relayFrom: [CIDR]
    /// `[server] etrn_from`.
    public let etrnFrom: [CIDR]
    /// `[server] command_timeout_s` (RFC 5321 4.5.3.2.7: 5 minutes).
    public let commandTimeout: TimeAmount
    /// `[server] data_timeout_s` (RFC 5321 4.5.3.2.5: 3 minutes per data block).
    public let dataTimeout: TimeAmount
    /// `[server] greet_pause_ms`: 0 = greet at once.
    public let greetPause: TimeAmount
    /// `[server] command_line_limit`, `text_line_limit`.
    public let commandLineLimit: Int
    public let textLineLimit: Int
    /// `[tls]`, when configured: STARTTLS on smtp and submission listeners, implicit TLS on smtps.
    public let tls: ServerTLS?
    /// `[auth]`: SMTP AUTH on submission and smtps listeners (and smtp ones with `offer_on_smtp`).
    public let auth: AuthSettings?
    private let stopping = Atomic<Bool>(false)
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    public init(
        session: SessionConfiguration, chain: StageChain, queue: any QueueStore, threadPool: NIOThreadPool,
        tracker: ConnectionTracker, logger: Logger, relayFrom: [CIDR], etrnFrom: [CIDR] = [], commandTimeout: TimeAmount,
        dataTimeout: TimeAmount, greetPause: TimeAmount, commandLineLimit: Int, textLineLimit: Int, tls: ServerTLS? = nil,
        auth: AuthSettings? = nil
    ) {
        self.tls = tls
        self.auth = auth
        self.session = session
        self.chain = chain
        self.queue = queue
        self.threadPool = threadPool
        self.tracker = tracker
        self.logger = logger
        self.relayFrom = relayFrom
        self.etrnFrom = etrnFrom
        self.commandTimeout = commandTimeout
        self.dataTimeout = dataTimeout
        self.greetPause = greetPause
        self.commandLineLimit = commandLineLimit
        self.textLineLimit = textLineLimit
    }

    public var isShuttingDown: Bool { stopping.load(ordering: .relaxed) }

    func register(_ channel: any Channel) {
        channels.withLock { $0[ObjectIdentifier(channel)] = channel }
    }

    func unregister(_ channel: any Channel) {
        channels.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    public var openSessions: Int { channels.withLock { $0.count } }

    /// Begins graceful shutdown: idle sessions get 421 4.3.2 now; busy ones after their transaction.
    public func beginShutdown() {
        stopping.store(true, ordering: .relaxed)
        for channel in channels.withLock({ Array($0.values) }) {
            channel.pipeline.fireUserInboundEventTriggered(ShutdownRequested())
        }
    }

    /// Closes whatever is still open (after the grace period).
    public func closeAll() {
        for channel in channels.withLock({ Array($0.values) }) {
            channel.close(promise: nil)
        }
    }
}

extension ServerContext {
    /// A new session's state machine and logger, from the connection's addresses (or those a
    /// PROXY header gave) and what its listener offers.
    func makeSession(
        remote: SocketAddress?, local: SocketAddress?, proxied: ProxyProtocolDecoder.ProxiedAddress?, listener: Listener
    ) -> (SessionStateMachine, Logger) {
        var clientAddress = remote?.ipAddress ?? "?"
        var clientPort = remote?.port ?? 0
        var serverAddress = local?.ipAddress ?? "?"
        var serverPort = local?.port ?? 0
        if let client = proxied?.client {
            clientAddress = IPAddress(client.address).map { "\($0)" } ?? client.address
            clientPort = client.port
        }
        if let server = proxied?.server {
            serverAddress = IPAddress(server.address).map { "\($0)" } ?? server.address
            serverPort = server.port
        }
        let sessionID = session.makeQueueID()
        var logger = self.logger
        logger[metadataKey: "session"] = "\(sessionID)"
        logger[metadataKey: "client"] = "\(clientAddress)"
        let info = SessionInfo(
            id: sessionID, clientAddress: clientAddress, clientPort: clientPort, serverAddress: serverAddress, serverPort: serverPort,
            serverHostname: session.hostname, trustedClient: relayFrom.contains { $0.contains(clientAddress) }
        )
        let policy = SessionStateMachine.ListenerPolicy(
            startTLS: tls != nil && listener.kind != .smtps, implicitTLS: listener.kind == .smtps,
            auth: auth != nil && (listener.kind != .smtp || auth!.offerOnSMTP),
            requireAuth: listener.requiresAuth
        )
        let machine = SessionStateMachine(
            configuration: session, session: info, etrnAllowed: etrnFrom.contains { $0.contains(clientAddress) }, policy: policy
        )
        return (machine, logger)
    }
}

/// What SMTP AUTH uses: the credentials, the failure limits, and where it is offered.
public struct AuthSettings: Sendable {
    public var authenticator: any Authenticator
    public var failures: AuthFailureTracker
    /// Offer AUTH on `kind = "smtp"` listeners too (after STARTTLS).
    public var offerOnSMTP: Bool

    public init(authenticator: any Authenticator, failures: AuthFailureTracker, offerOnSMTP: Bool = false) {
        self.authenticator = authenticator
        self.failures = failures
        self.offerOnSMTP = offerOnSMTP
    }
}

/// Sent through each session's pipeline when the gateway stops.
struct ShutdownRequested: Sendable {}
