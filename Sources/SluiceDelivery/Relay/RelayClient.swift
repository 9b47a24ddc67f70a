import Logging
import NIOCore
import NIOPosix
import NIOSSL
import SMTPCore
import SluiceSpool
import Synchronization

/// One message for one next hop: the envelope part going there and where the content lies.
public struct RelayMessage: Sendable {
    public var sender: ReversePath
    public var recipients: [Mailbox]
    /// The content, as the queue store gives it.
    public var content: MessageContent
    public var body: BodyType?
    public var smtputf8: Bool
    /// DSN requests (RFC 3461), passed on when the next hop offers DSN: MAIL's RET and ENVID
    /// (decoded), and each recipient's NOTIFY and ORCPT parameters (in `recipients` order).
    public var dsnReturn: DSNReturn?
    public var envelopeID: String?
    public var recipientParameters: [[ESMTPParameter]] = []

    /// Header fields sent before the content (CRLF lines).
    public var prefix: [UInt8]
    /// What SIZE announces: prefix and content.
    public var size: Int { prefix.count + content.length }

    public init(
        sender: ReversePath, recipients: [Mailbox], content: MessageContent, prefix: [UInt8] = [],
        body: BodyType?, smtputf8: Bool
    ) {
        self.prefix = prefix
        self.sender = sender
        self.recipients = recipients
        self.content = content
        self.body = body
        self.smtputf8 = smtputf8
    }
}

/// What became of one recipient at the next hop.
public enum RecipientOutcome: Sendable, Hashable, CustomStringConvertible {
    /// 2xx: the next hop took it.
    case delivered(SMTPReply)
    /// 2xx from a next hop that offers DSN and got the recipient's DSN request: any further
    /// notice about the recipient is the next hop's to send.
    case passedOn(SMTPReply)
    /// 4xx, or the connection failed: try again later.
    case deferred(SMTPReply)
    /// 5xx: give up and bounce.
    case failed(SMTPReply)

    public var reply: SMTPReply {
        switch self {
        case .delivered(let r), .passedOn(let r), .deferred(let r), .failed(let r): r
        }
    }

    public var description: String {
        switch self {
        case .delivered(let r): "delivered (\(r))"
        case .passedOn(let r): "delivered (\(r)), DSN passed on"
        case .deferred(let r): "deferred (\(r))"
        case .failed(let r): "failed (\(r))"
        }
    }

    static func from(_ reply: SMTPReply) -> RecipientOutcome {
        reply.isPositive ? .delivered(reply) : reply.isTransientFailure ? .deferred(reply) : .failed(reply)
    }
}

/// Timeouts of the relay client (`[queue]` keys).
public struct RelayTimeouts: Sendable {
    /// `connect_timeout_s` (30).
    public var connect: TimeAmount = .seconds(30)
    /// `command_timeout_s` (300): each reply, and each write of message data.
    public var command: TimeAmount = .seconds(300)
    public init() {}
}

/// The SMTP/LMTP client side. Messages for one next hop queue up per destination; up to
/// `destination_concurrency` connections work through that queue, each carrying several
/// messages (RSET between them), as Postfix's queue manager does.
///
/// In a conversation: EHLO falls back to HELO; MAIL, RCPT and DATA are pipelined when the next
/// hop offers PIPELINING; SIZE, 8BITMIME and SMTPUTF8 are checked against what it offers
/// (RFC 1870, 6152, 6531) before anything is sent; content goes out canonical (CRLF,
/// dot-stuffed). LMTP (RFC 2033) reads one reply per accepted recipient after the final dot.
/// A protocol error, hostile reply or timeout fails the connection cleanly and defers the
/// recipients not yet answered. STARTTLS follows the route's `tls` (``RelayTLSPolicy``).
public final class RelayClient: Sendable {
    public let hostname: String
    let group: any EventLoopGroup
    let threadPool: NIOThreadPool
    let timeouts: RelayTimeouts
    let logger: Logger
    private let dispatcher: RelayDispatcher
    private let tlsSettings: [RelayEndpoint: RelayTLSSettings]
    private let defaultTLSSettings: RelayTLSSettings
    private let tlsContexts: RelayTLSContexts
    private let tlsFailures = Mutex<[RelayEndpoint: NIODeadline]>([:])

    /// - Parameters:
    ///   - tlsSettings: each route's `tls` (and `tls_ca_file`) by next hop.
    ///   - defaultTLSSettings: for every other next hop (mail hosts found by an `mx` route).
    ///
    /// The TLS contexts are built here, once: one per distinct `tls_ca_file` of a `verify` route.
    public init(
        hostname: String, group: any EventLoopGroup, threadPool: NIOThreadPool, timeouts: RelayTimeouts,
        connectionsPerDestination: Int = 20, tlsSettings: [RelayEndpoint: RelayTLSSettings] = [:],
        defaultTLSSettings: RelayTLSSettings = .opportunistic, logger: Logger
    ) throws {
        self.defaultTLSSettings = defaultTLSSettings
        self.hostname = hostname
        self.group = group
        self.threadPool = threadPool
        self.timeouts = timeouts
        self.logger = logger
        self.dispatcher = RelayDispatcher(limit: connectionsPerDestination)
        self.tlsSettings = tlsSettings
        self.tlsContexts = try RelayTLSContexts(Array(tlsSettings.values) + [defaultTLSSettings])
    }

    func tlsSettings(for endpoint: RelayEndpoint) -> RelayTLSSettings { tlsSettings[endpoint] ?? defaultTLSSettings }
    func tlsPolicy(for endpoint: RelayEndpoint) -> RelayTLSPolicy { tlsSettings(for: endpoint).policy }

    func tlsRecentlyFailed(_ endpoint: RelayEndpoint) -> Bool {
        tlsFailures.withLock { $0[endpoint].map { NIODeadline.now() < $0 } ?? false }
    }

    func noteTLSFailure(_ endpoint: RelayEndpoint) {
        logger.notice("TLS handshake failed; plaintext to this next hop for an hour", metadata: ["next_hop": "\(endpoint)"])
        tlsFailures.withLock { $0[endpoint] = .now() + .hours(1) }
    }

    /// Puts a TLS client handler in front of the connection, after the next hop's 220 to STARTTLS.
    /// Returns what keeps the handler's first error (why a `verify` handshake failed).
    func startTLS(on channel: any Channel, endpoint: RelayEndpoint) async throws -> TLSHandshakeErrorRecorder {
        let settings = tlsSettings(for: endpoint)
        let context = tlsContexts.context(for: settings)
        let name = Self.tlsServerName(endpoint, policy: settings.policy)
        let expected = name ?? Self.tlsAddress(endpoint).map { "the address \($0)" } ?? "no name"
        let recorder = TLSHandshakeErrorRecorder()
        try await channel.eventLoop.submit {
            let handler = try NIOSSLClientHandler(context: context, serverHostname: name)
            try channel.pipeline.syncOperations.addHandler(handler, position: .first)
            let watcher = recorder.handler { RelayTLSContexts.reason($0, expected: expected) }
            try channel.pipeline.syncOperations.addHandler(watcher, position: .after(handler))
        }.get()
        return recorder
    }

    /// The address a `verify` certificate must carry (as an IP subjectAltName) when there is no name.
    static func tlsAddress(_ endpoint: RelayEndpoint) -> String? {
        switch endpoint {
        case .smtp(let host, _), .lmtp(let host, _), .mailHost(_, let host, _): host
        case .lmtpUnix: nil
        }
    }

    /// The SNI name, which `verify` also checks the certificate against: the route's host, or
    /// (under `verify` only, as before for the other levels) the MX host name. Nil for an IP
    /// literal: then an IP subjectAltName must match the address connected to.
    static func tlsServerName(_ endpoint: RelayEndpoint, policy: RelayTLSPolicy) -> String? {
        var name: String
        switch endpoint {
        case .smtp(let host, _), .lmtp(let host, _): name = host
        case .mailHost(let host, _, _):
            guard policy == .verify else { return nil }
            name = host
        case .lmtpUnix: return nil
        }
        if name.hasSuffix(".") { name.removeLast() }
        // An address literal ([192.0.2.1]) from an `mx` route is an address, not a name.
        guard !name.isEmpty, !name.hasPrefix("["), !IPAddressText.isLiteral(name) else { return nil }
        return name
    }

    /// Delivers one message to one next hop; returns each recipient's outcome, in order.
    public func deliver(_ message: RelayMessage, to endpoint: RelayEndpoint) async -> [RecipientOutcome] {
        await withCheckedContinuation { continuation in
            let job = RelayJob(message: message, continuation: continuation)
            Task { await dispatcher.submit(job, to: endpoint, client: self) }
        }
    }

    /// A worker for one destination: connections one after another until its queue is empty.
    func work(_ endpoint: RelayEndpoint, first: RelayJob) async {
        var job: RelayJob? = first
        while let current = job {
            await converse(endpoint, first: current)
            job = await dispatcher.nextOrRetire(endpoint)
        }
    }

    /// One connection: delivers `first` and then whatever else waits for the destination,
    /// until the queue is empty or the connection fails.
    private func converse(_ endpoint: RelayEndpoint, first: RelayJob) async {
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await connect(endpoint)
        } catch {
            // The next hop is unreachable: everything waiting for it is deferred now.
            let reply = SMTPReply(451, "4.4.1", "connect to \(endpoint) failed: \(error)")
            first.finish(.deferred(reply))
            for job in await dispatcher.drain(endpoint) { job.finish(.deferred(reply)) }
            return
        }
        var firstFinished = false
        do {
            try await channel.executeThenClose { inbound, outbound in
                firstFinished = true  // from here on every path below finishes `first`
                var session = RelaySession(
                    client: self, endpoint: endpoint, inbound: inbound.makeAsyncIterator(), outbound: outbound,
                    watchdog: Watchdog(channel: channel.channel, timeout: timeouts.command)
                )
                var job: RelayJob? = first
                let extensions: [String: String]
                do {
                    switch try await session.handshake() {
                    case .success(let e): extensions = e
                    case .failure(let refusal):
                        first.finish(refusal.outcome)
                        for other in await dispatcher.drain(endpoint) { other.finish(refusal.outcome) }
                        return
                    }
                } catch {
                    first.finish(.deferred(SMTPReply(451, "4.4.2", "conversation with \(endpoint) failed: \(error)")))
                    return
                }
                var reset = false
                while let current = job {
                    var outcomes: [RecipientOutcome?] = Array(repeating: nil, count: current.message.recipients.count)
                    do {
                        try await session.transaction(current.message, extensions: extensions, reset: reset, outcomes: &outcomes)
                    } catch {
                        logger.notice("relay connection failed", metadata: ["next_hop": "\(endpoint)", "error": "\(error)"])
                        let reply = SMTPReply(451, "4.4.2", "conversation with \(endpoint) failed: \(error)")
                        current.finish(outcomes.map { $0 ?? .deferred(reply) })
                        return
                    }
                    current.finish(outcomes.map { $0 ?? .deferred(SMTPReply(451, "4.4.2", "no answer from \(endpoint)")) })
                    reset = true
                    job = await dispatcher.take(endpoint)
                }
                await session.quit()
            }
        } catch {
            logger.notice("relay connection failed", metadata: ["next_hop": "\(endpoint)", "error": "\(error)"])
        }
        if !firstFinished { first.finish(.deferred(SMTPReply(451, "4.4.2", "connection to \(endpoint) failed"))) }
    }

    private func connect(_ endpoint: RelayEndpoint) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeouts.connect)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
        let initializer: @Sendable (any Channel) -> EventLoopFuture<NIOAsyncChannel<ByteBuffer, ByteBuffer>> = { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
        switch endpoint {
        case .smtp(let host, let port), .lmtp(let host, let port), .mailHost(_, let host, let port):
            return try await bootstrap.connect(host: host, port: port, channelInitializer: initializer)
        case .lmtpUnix(let path):
            return try await bootstrap.connect(unixDomainSocketPath: path, channelInitializer: initializer)
        }
    }
}

/// A message waiting for a connection, and whoever waits for its outcome.
struct RelayJob: Sendable {
    let message: RelayMessage
    let continuation: CheckedContinuation<[RecipientOutcome], Never>

    func finish(_ outcomes: [RecipientOutcome]) { continuation.resume(returning: outcomes) }
    func finish(_ outcome: RecipientOutcome) { finish(Array(repeating: outcome, count: message.recipients.count)) }
}

/// Per-destination queues and connection counts.
actor RelayDispatcher {
    private let limit: Int
    private var queues: [RelayEndpoint: [RelayJob]] = [:]
    private var workers: [RelayEndpoint: Int] = [:]

    init(limit: Int) { self.limit = max(1, limit) }

    func submit(_ job: RelayJob, to endpoint: RelayEndpoint, client: RelayClient) {
        if workers[endpoint, default: 0] < limit {
            workers[endpoint, default: 0] += 1
            Task { await client.work(endpoint, first: job) }
        } else {
            queues[endpoint, default: []].append(job)
        }
    }

    /// The next waiting job for an open connection of `endpoint`, if any.
    func take(_ endpoint: RelayEndpoint) -> RelayJob? {
        guard var queue = queues[endpoint], !queue.isEmpty else { return nil }
        let job = queue.removeFirst()
        queues[endpoint] = queue.isEmpty ? nil : queue
        return job
    }

    /// The next job for a worker between connections; with none, the worker retires.
    func nextOrRetire(_ endpoint: RelayEndpoint) -> RelayJob? {
        if let job = take(endpoint) { return job }
        let left = workers[endpoint, default: 1] - 1
        workers[endpoint] = left > 0 ? left : nil
        return nil
    }

    /// Takes every waiting job (the next hop is down: they are all deferred at once).
    func drain(_ endpoint: RelayEndpoint) -> [RelayJob] {
        defer { queues[endpoint] = nil }
        return queues[endpoint] ?? []
    }
}

/// Closes the channel when a step takes longer than the timeout; the pending read then ends.
struct Watchdog {
    let channel: any Channel
    let timeout: TimeAmount
    private var task: Scheduled<Void>?

    init(channel: any Channel, timeout: TimeAmount) {
        self.channel = channel
        self.timeout = timeout
    }

    mutating func arm() {
        task?.cancel()
        let channel = self.channel
        task = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    mutating func disarm() {
        task?.cancel()
        task = nil
    }
}

/// Whether a host is an IP literal (TLS SNI takes names only).
enum IPAddressText {
    static func isLiteral(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}
