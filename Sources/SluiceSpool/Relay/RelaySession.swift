import NIOCore
import NIOPosix
import SMTPCore

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

    /// Greeting and EHLO (HELO when EHLO is refused; LHLO for LMTP). Returns the offered
    /// extensions, or the outcome for every recipient when the next hop will not talk.
    mutating func handshake() async throws -> Result<[String: String], RecipientOutcomeFailure> {
        let greeting = try await readReply()
        guard greeting.code == 220 else {
            try? await send("QUIT\r\n")
            return .failure(.init(outcome: .deferred(SMTPReply(451, "4.4.2", "\(endpoint) greeted with \(greeting)"))))
        }
        try await send("\(endpoint.isLMTP ? "LHLO" : "EHLO") \(client.hostname)\r\n")
        var hello = try await readReply()
        var extensions: [String: String] = [:]
        if hello.code == 250 {
            for line in hello.lines.dropFirst() {
                let parts = line.split(separator: " ", maxSplits: 1)
                if let keyword = parts.first { extensions[keyword.uppercased()] = parts.count > 1 ? String(parts[1]) : "" }
            }
        } else if !endpoint.isLMTP && hello.isPermanentFailure {
            try await send("HELO \(client.hostname)\r\n")
            hello = try await readReply()
        }
        guard hello.code == 250 else {
            try? await send("QUIT\r\n")
            return .failure(.init(outcome: .from(hello).asDeferredUnlessPermanent))
        }
        return .success(extensions)
    }

    /// One mail transaction on an open connection; `reset` sends RSET first (a reused connection).
    /// Fills `outcomes` as replies come in; a broken connection throws.
    mutating func transaction(
        _ message: RelayMessage, extensions: [String: String], reset: Bool, outcomes: inout [RecipientOutcome?]
    ) async throws {
        func all(_ outcome: RecipientOutcome) {
            for i in outcomes.indices where outcomes[i] == nil { outcomes[i] = outcome }
        }
        // Refuse before sending what the next hop cannot take.
        if let limit = extensions["SIZE"].flatMap({ Int($0) }), limit > 0, message.contentLength > limit {
            return all(.failed(SMTPReply(552, "5.3.4", "message size \(message.contentLength) exceeds the limit \(limit) of \(endpoint)")))
        } else if message.smtputf8 && extensions["SMTPUTF8"] == nil {
            return all(.failed(SMTPReply(550, "5.6.7", "\(endpoint) does not support SMTPUTF8 (RFC 6531)")))
        } else if message.body == .eightBitMIME && extensions["8BITMIME"] == nil {
            return all(.failed(SMTPReply(554, "5.6.3", "\(endpoint) does not support 8BITMIME (RFC 6152)")))
        }
        if reset {
            try await send("RSET\r\n")
            let r = try await readReply()
            guard r.code == 250 else { throw Failure(description: "\(endpoint) refused RSET: \(r)") }
        }

        var mail = "MAIL FROM:\(message.sender)"
        if extensions["SIZE"] != nil { mail += " SIZE=\(message.contentLength)" }
        if message.body == .eightBitMIME { mail += " BODY=8BITMIME" }
        if message.smtputf8 { mail += " SMTPUTF8" }
        let commands = [mail] + message.recipients.map { "RCPT TO:<\($0)>" } + ["DATA"]

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
            for (i, rcpt) in message.recipients.enumerated() {
                try await send("RCPT TO:<\(rcpt)>\r\n")
                let r = try await readReply()
                if r.isPositive { accepted.append(i) } else { outcomes[i] = .from(r) }
            }
            guard !accepted.isEmpty else { return }
            try await send("DATA\r\n")
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
            for i in accepted { outcomes[i] = .from(try await readReply()) }
        } else {
            let final = try await readReply()
            for i in accepted { outcomes[i] = .from(final) }
        }
    }

    /// A pipelined DATA got its 354 although nothing should be sent: an empty message ends it
    /// and its reply is ignored (RFC 2920 section 3.1).
    private mutating func abortData() async throws {
        try await send(".\r\n")
        _ = try await readReply()
    }

    mutating func quit() async {
        try? await send("QUIT\r\n")
        _ = try? await readReply()
    }

    /// Streams the content from the spool, canonical and dot-stuffed, ending with `.`.
    private mutating func sendContent(_ message: RelayMessage) async throws {
        let reader = ChunkReader(path: message.path, position: 0, end: message.contentLength, threadPool: client.threadPool)
        var canonical = OutboundCanonicalizer()
        var out: [UInt8] = []
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
        return self
    }
}
