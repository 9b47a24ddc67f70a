import Logging
import NIOCore
import NIOPosix
import NIOSSL
import SMTPCore
import SluiceSpool
import SluiceMessage

/// One client conversation with a next hop (RFC 5321 section 3, RFC 2920, RFC 2033).
struct RelaySession {
    let client: RelayClient
    let endpoint: RelayEndpoint
    var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    var watchdog: Watchdog
    private var parser = SMTPReplyParser()

    init(client: RelayClient, endpoint: RelayEndpoint, inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator,
         outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, watchdog: Watchdog) {
        self.client = client
        self.endpoint = endpoint
        self.inbound = inbound
        self.outbound = outbound
        self.watchdog = watchdog
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Reads the next reply; a closed connection, a timeout or a malformed reply throws.
    mutating func readReply() async throws -> SMTPReply {
        watchdog.arm()
        defer { watchdog.disarm() }
        while true {
            if let reply = try parser.next() { return reply }
            guard let chunk = try await inbound.next() else {
                throw Failure(description: "connection closed by \(endpoint) (or timed out)")
            }
            parser.feed(chunk.readableBytesView)
        }
    }

    mutating func send(_ text: String) async throws {
        try await send(Array(text.utf8))
    }

    mutating func send(_ bytes: [UInt8]) async throws {
        watchdog.arm()
        defer { watchdog.disarm() }
        try await outbound.write(ByteBuffer(bytes: bytes))
    }

    static let greetedWith = "greeted with"

    /// True for the deferral of a next hop that would not greet: an MX route then tries the
    /// next host (like a connect failure), while a lost conversation does not.
    static func isGreetingRefusal(_ reply: SMTPReply) -> Bool {
        reply.enhancedCode?.description == "4.4.2" && reply.lines.first?.contains(" \(greetedWith) ") == true
    }

    /// EHLO, or LHLO for LMTP, with its CRLF.
    private var helloCommand: String {
        endpoint.isLMTP ? SMTPCommand.lhlo(client.hostname) + "\r\n" : SMTPCommand.ehlo(client.hostname).line
    }

    /// Greeting and EHLO (HELO when EHLO is refused; LHLO for LMTP). Returns the offered
    /// extensions, or the outcome for every recipient when the next hop will not talk.
    mutating func handshake() async throws -> Result<[String: String], RecipientOutcomeFailure> {
        let greeting = try await readReply()
        guard greeting.code == 220 else {
            try? await send(SMTPCommand.quit.line)
            return .failure(.init(outcome: .deferred(SMTPReply(451, "4.4.2", "\(endpoint) \(Self.greetedWith) \(greeting)"))))
        }
        try await send(helloCommand)
        var hello = try await readReply()
        var extensions: [String: String] = [:]
        if hello.code == 250 {
            extensions = Self.extensions(hello)
        } else if !endpoint.isLMTP && hello.isPermanentFailure {
            try await send(SMTPCommand.helo(client.hostname).line)
            hello = try await readReply()
        }
        guard hello.code == 250 else {
            try? await send(SMTPCommand.quit.line)
            return .failure(.init(outcome: .from(hello).asDeferredUnlessPermanent))
        }
        return try await negotiateTLS(extensions)
    }

    /// STARTTLS (RFC 3207) per the route's `tls`: opportunistic uses it when offered (and falls
    /// back to plaintext for a while after a failed handshake), required defers without it, and
    /// verify also defers (4.7.5, naming the problem) when the certificate does not verify or
    /// does not name the next hop; neither ever falls back to plaintext.
    private mutating func negotiateTLS(_ extensions: [String: String]) async throws -> Result<[String: String], RecipientOutcomeFailure> {
        let policy = client.tlsPolicy(for: endpoint)
        let offered = extensions["STARTTLS"] != nil
        func refuse(_ why: String) async -> Result<[String: String], RecipientOutcomeFailure> {
            try? await send(SMTPCommand.quit.line)
            return .failure(.init(outcome: .deferred(SMTPReply(451, "4.7.5", why))))
        }
        let level = policy == .verify ? "TLS with a verified certificate (tls = verify)" : "TLS"
        guard policy != .none, offered, policy.demandsTLS || !client.tlsRecentlyFailed(endpoint) else {
            if policy.demandsTLS { return await refuse("\(level) is required but \(endpoint) does not offer STARTTLS") }
            return .success(extensions)
        }
        try await send(SMTPCommand.starttls.line)
        let ready = try await readReply()
        guard ready.code == 220 else {
            if policy.demandsTLS { return await refuse("\(endpoint) refused STARTTLS: \(ready)") }
            return .success(extensions)
        }
        // Nothing may follow the 220 in plaintext (RFC 3207 section 5, CVE-2011-0411).
        guard !parser.hasBufferedInput else { throw Failure(description: "\(endpoint) sent data after its STARTTLS 220") }
        var recorder: TLSHandshakeErrorRecorder?
        do {
            recorder = try await client.startTLS(on: watchdog.channel, endpoint: endpoint)
            try await send(helloCommand)
            let hello = try await readReply()
            guard hello.code == 250 else { return await refuse("\(endpoint) refused EHLO after STARTTLS: \(hello)") }
            tlsActive = true
            client.logger.info("STARTTLS done", metadata: [
                "next_hop": "\(endpoint)", "tls": "\(policy == .verify ? "verified" : "unverified")",
                "server_name": "\(RelayClient.tlsServerName(endpoint, policy: policy) ?? "-")",
            ])
            return .success(Self.extensions(hello))
        } catch {
            if policy == .opportunistic { client.noteTLSFailure(endpoint) }
            if policy == .verify {
                // The connection is unusable; nothing more is said on it, in TLS or in plaintext.
                let why = recorder?.reason ?? RelayTLSContexts.reason(error, expected: "\(endpoint)")
                client.logger.notice("TLS verification failed", metadata: ["next_hop": "\(endpoint)", "error": "\(why)"])
                return .failure(.init(outcome: .deferred(SMTPReply(451, "4.7.5", "TLS with \(endpoint) failed: \(why)"))))
            }
            throw Failure(description: "TLS with \(endpoint) failed: \(error)")
        }
    }

    /// The EHLO keywords (uppercased) and their parameters (RFC 5321 4.1.1.1).
    static func extensions(_ hello: SMTPReply) -> [String: String] {
        var extensions: [String: String] = [:]
        for line in hello.lines.dropFirst() {
            let parts = line.split(separator: " ", maxSplits: 1)
            if let keyword = parts.first { extensions[keyword.uppercased()] = parts.count > 1 ? String(parts[1]) : "" }
        }
        return extensions
    }

    /// True once STARTTLS succeeded on this connection.
    private(set) var tlsActive = false

    /// One mail transaction on an open connection; `reset` sends RSET first (a reused connection).
    /// Fills `outcomes` as replies come in; a broken connection throws.
    mutating func transaction(
        _ message: RelayMessage, extensions: [String: String], reset: Bool, outcomes: inout [RecipientOutcome?]
    ) async throws {
        func all(_ outcome: RecipientOutcome) {
            for i in outcomes.indices where outcomes[i] == nil { outcomes[i] = outcome }
        }
        // Refuse before sending what the next hop cannot take.
        if let limit = extensions["SIZE"].flatMap({ Int($0) }), limit > 0, message.size > limit {
            return all(.failed(SMTPReply(552, "5.3.4", "message size \(message.size) exceeds the limit \(limit) of \(endpoint)")))
        } else if message.smtputf8 && extensions["SMTPUTF8"] == nil {
            return all(.failed(SMTPReply(550, "5.6.7", "\(endpoint) does not support SMTPUTF8 (RFC 6531)")))
        } else if message.body == .eightBitMIME && extensions["8BITMIME"] == nil {
            return all(.failed(SMTPReply(554, "5.6.3", "\(endpoint) does not support 8BITMIME (RFC 6152)")))
        }
        if reset {
            try await send(SMTPCommand.rset.line)
            let r = try await readReply()
            guard r.code == 250 else { throw Failure(description: "\(endpoint) refused RSET: \(r)") }
        }

        var parameters = MailParameters()
        if extensions["SIZE"] != nil { parameters.size = UInt64(message.size) }
        if message.body == .eightBitMIME { parameters.body = .eightBitMIME }
        parameters.smtputf8 = message.smtputf8
        // DSN (RFC 3461 5.2): the requests go on to a next hop that offers it, and it notifies.
        let dsn = extensions["DSN"] != nil
        if dsn {
            parameters.ret = message.dsnReturn
            parameters.envelopeID = message.envelopeID
        }
        let mail = SMTPCommand.mail(message.sender, parameters).encoded
        let rcpts = message.recipients.indices.map { i in
            let params = dsn && i < message.recipientParameters.count ? message.recipientParameters[i] : []
            return SMTPCommand.rcpt(.mailbox(message.recipients[i]), params).encoded
        }
        func taken(_ reply: SMTPReply) -> RecipientOutcome {
            let outcome = RecipientOutcome.from(reply)
            if dsn, case .delivered(let r) = outcome { return .passedOn(r) }
            return outcome
        }
        let commands = [mail] + rcpts + [SMTPCommand.data.encoded]

        var accepted: [Int] = []
        var dataReply: SMTPReply
        if extensions["PIPELINING"] != nil {
            // RFC 2920: the whole group in one write, replies read in order.
            try await send(commands.map { $0 + "\r\n" }.joined())
            let mailReply = try await readReply()
            for i in message.recipients.indices {
                let r = try await readReply()
                if mailReply.code == 250 {
                    if r.isPositive { accepted.append(i) } else { outcomes[i] = .from(r) }
                }
            }
            dataReply = try await readReply()
            if mailReply.code != 250 {
                all(.from(mailReply))
                if dataReply.code == 354 { try await abortData() }
                return
            }
        } else {
            try await send(mail + "\r\n")
            let mailReply = try await readReply()
            guard mailReply.code == 250 else { return all(.from(mailReply)) }
            for (i, rcpt) in rcpts.enumerated() {
                try await send(rcpt + "\r\n")
                let r = try await readReply()
                if r.isPositive { accepted.append(i) } else { outcomes[i] = .from(r) }
            }
            guard !accepted.isEmpty else { return }
            try await send(SMTPCommand.data.line)
            dataReply = try await readReply()
        }
        if accepted.isEmpty {
            // Every recipient refused; a pipelined DATA may still have been accepted.
            if dataReply.code == 354 { try await abortData() }
            return
        }
        guard dataReply.code == 354 else {
            for i in accepted { outcomes[i] = .from(dataReply) }
            return
        }

        try await sendContent(message)

        if endpoint.isLMTP {
            // RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
            for i in accepted { outcomes[i] = taken(try await readReply()) }
        } else {
            let final = try await readReply()
            for i in accepted { outcomes[i] = taken(final) }
        }
    }

    /// A pipelined DATA got its 354 although nothing should be sent: an empty message ends it
    /// and its reply is ignored (RFC 2920 section 3.1).
    private mutating func abortData() async throws {
        try await send(".\r\n")
        _ = try await readReply()
    }

    mutating func quit() async {
        try? await send(SMTPCommand.quit.line)
        _ = try? await readReply()
    }

    /// Streams the content from the spool, canonical and dot-stuffed, ending with `.`.
    private mutating func sendContent(_ message: RelayMessage) async throws {
        var reader = message.content.chunks(threadPool: client.threadPool).makeAsyncIterator()
        var canonical = OutboundCanonicalizer()
        var out: [UInt8] = []
        if !message.prefix.isEmpty {
            canonical.process(message.prefix, into: &out)
            try await send(out)
        }
        while let chunk = try await reader.next() {
            out.removeAll(keepingCapacity: true)
            canonical.process(chunk, into: &out)
            try await send(out)
        }
        out.removeAll(keepingCapacity: true)
        canonical.finish(into: &out)
        try await send(out)
    }
}

/// The next hop would not talk: this outcome applies to every recipient.
struct RecipientOutcomeFailure: Error {
    var outcome: RecipientOutcome
}

extension RecipientOutcome {
    /// A refused greeting or HELO is about the connection, not the recipient: retry unless permanent.
    var asDeferredUnlessPermanent: RecipientOutcome {
        if case .delivered(let r) = self { return .deferred(r) }
        if case .passedOn(let r) = self { return .deferred(r) }
        return self
    }
}
