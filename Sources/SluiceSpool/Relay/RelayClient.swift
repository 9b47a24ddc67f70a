import Logging
import NIOCore
import NIOPosix
import SMTPCore

/// One message for one next hop: the envelope part going there and where the content lies.
public struct RelayMessage: Sendable {
    public var sender: ReversePath
    public var recipients: [Mailbox]
    /// The queue file; the content is its first `contentLength` octets.
    public var path: String
    public var contentLength: Int
    public var body: BodyType?
    public var smtputf8: Bool

    public init(sender: ReversePath, recipients: [Mailbox], path: String, contentLength: Int, body: BodyType?, smtputf8: Bool) {
        self.sender = sender
        self.recipients = recipients
        self.path = path
        self.contentLength = contentLength
        self.body = body
        self.smtputf8 = smtputf8
    }
}

/// What became of one recipient at the next hop.
public enum RecipientOutcome: Sendable, Hashable, CustomStringConvertible {
    /// 2xx: the next hop took it.
    case delivered(SMTPReply)
    /// 4xx, or the connection failed: try again later.
    case deferred(SMTPReply)
    /// 5xx: give up and bounce.
    case failed(SMTPReply)

    public var reply: SMTPReply {
        switch self {
        case .delivered(let r), .deferred(let r), .failed(let r): r
        }
    }

    public var description: String {
        switch self {
        case .delivered(let r): "delivered (\(r))"
        case .deferred(let r): "deferred (\(r))"
        case .failed(let r): "failed (\(r))"
        }
    }

    static func from(_ reply: SMTPReply) -> RecipientOutcome {
        reply.isPositive ? .delivered(reply) : reply.isTransientFailure ? .deferred(reply) : .failed(reply)
    }
}

/// Where the relay client connects.
public enum RelayEndpoint: Sendable, Hashable, CustomStringConvertible {
    case smtp(host: String, port: Int)
    case lmtp(host: String, port: Int)
    case lmtpUnix(path: String)

    var isLMTP: Bool {
        if case .smtp = self { return false }
        return true
    }

    public var description: String {
        switch self {
        case .smtp(let h, let p): "smtp://\(h):\(p)"
        case .lmtp(let h, let p): "lmtp://\(h):\(p)"
        case .lmtpUnix(let path): "lmtp:unix:\(path)"
        }
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

/// The SMTP/LMTP client side: delivers one message over one connection and reports each
/// recipient's fate. EHLO falls back to HELO; MAIL, RCPT and DATA are pipelined when the next
/// hop offers PIPELINING; SIZE, 8BITMIME and SMTPUTF8 are checked against what it offers
/// (RFC 1870, 6152, 6531) before anything is sent; content goes out canonical (CRLF, dot-stuffed).
/// LMTP (RFC 2033) reads one reply per accepted recipient after the final dot.
/// Any protocol error, hostile reply or timeout fails the connection cleanly and defers
/// the recipients that were not yet answered.
public struct RelayClient: Sendable {
    public var hostname: String
    public var group: any EventLoopGroup
    public var threadPool: NIOThreadPool
    public var timeouts: RelayTimeouts
    public var logger: Logger

    public init(hostname: String, group: any EventLoopGroup, threadPool: NIOThreadPool, timeouts: RelayTimeouts, logger: Logger) {
        self.hostname = hostname
        self.group = group
        self.threadPool = threadPool
        self.timeouts = timeouts
        self.logger = logger
    }

    struct ConnectionFailure: Error, CustomStringConvertible {
        var reason: String
        var description: String { reason }
    }

    public func deliver(_ message: RelayMessage, to endpoint: RelayEndpoint) async -> [RecipientOutcome] {
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await connect(endpoint)
        } catch {
            let reply = SMTPReply(451, "4.4.1", "connect to \(endpoint) failed: \(error)")
            return Array(repeating: .deferred(reply), count: message.recipients.count)
        }
        var outcomes: [RecipientOutcome?] = Array(repeating: nil, count: message.recipients.count)
        do {
            try await channel.executeThenClose { inbound, outbound in
                var session = RelaySession(
                    client: self, endpoint: endpoint, inbound: inbound.makeAsyncIterator(), outbound: outbound,
                    watchdog: Watchdog(channel: channel.channel, timeout: timeouts.command)
                )
                try await session.run(message, outcomes: &outcomes)
            }
        } catch {
            logger.notice("relay connection failed", metadata: ["next_hop": "\(endpoint)", "error": "\(error)"])
            let reply = SMTPReply(451, "4.4.2", "conversation with \(endpoint) failed: \(error)")
            for i in outcomes.indices where outcomes[i] == nil { outcomes[i] = .deferred(reply) }
        }
        return outcomes.map { $0 ?? .deferred(SMTPReply(451, "4.4.2", "no answer from \(endpoint)")) }
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
        case .smtp(let host, let port), .lmtp(let host, let port):
            return try await bootstrap.connect(host: host, port: port, channelInitializer: initializer)
        case .lmtpUnix(let path):
            return try await bootstrap.connect(unixDomainSocketPath: path, channelInitializer: initializer)
        }
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
