import SMTPCore
import SluiceStageAPI
import Synchronization

/// `use = "milter"`: attaches a milter (opendkim, rspamd's proxy, spamass-milter, ...) as a
/// stage, speaking the milter protocol version 6 as Postfix's MTA side does.
///
/// ```toml
/// [[stage]]
/// use = "milter"
/// name = "opendkim"
/// socket = "inet:127.0.0.1:8891"      # or "unix:/run/opendkim.sock"
/// default_action = "tempfail"         # tempfail | accept | reject | quarantine
/// connect_timeout_ms = 30000
/// command_timeout_ms = 30000
/// content_timeout_ms = 300000
/// ```
///
/// Keys: `socket` (required), `protocol` (6), `default_action` (what a dead, slow or
/// misbehaving milter means; after it the milter is left alone for the rest of the session),
/// the three timeouts, and optional macro lists `connect_macros`, `helo_macros`, `mail_macros`,
/// `rcpt_macros`, `data_macros`, `eoh_macros`, `eom_macros` (defaults as Postfix's
/// `milter_*_macros`; a list the milter asks for in negotiation wins).
///
/// One connection per SMTP session (opened at connect, closed at disconnect). Every reply maps
/// onto a verdict (accept, continue, reject, tempfail, discard, custom reply, quarantine) and
/// every end-of-message action onto an edit (add/insert/change/delete header, add/delete
/// recipient, change sender, replace body), which the next stage sees.
public struct MilterStage: Stage {
    public enum DefaultAction: String, Sendable, CaseIterable { case tempfail, accept, reject, quarantine }

    let socket: MilterConnection.Socket
    let defaultAction: DefaultAction
    let connectTimeout: Duration
    let commandTimeout: Duration
    let contentTimeout: Duration
    let macros: [Milter.MacroStage: [String]]
    let hostname: String
    let temporaryDirectory: String
    let stageName: String

    public var phases: Set<StagePhase> { [.connect, .helo, .mailFrom, .rcptTo, .data, .endOfMessage, .disconnect] }
    public var capabilities: StageCapabilities { [.readsBody, .addsHeaders, .changesHeaders, .changesEnvelope, .replacesBody] }

    public static let factory = StageFactory(
        name: "milter", summary: "a milter (protocol 6) as a stage: every reply and end-of-message action mapped onto verdicts and edits"
    ) { config, environment in try MilterStage(config: config, environment: environment) }

    public init(config: ConfigTable, environment: StageEnvironment) throws {
        guard let text = try config.string("socket") else { throw config.error("socket", "missing: inet:host:port or unix:/path") }
        guard let socket = MilterConnection.Socket(text) else { throw config.error("socket", "'\(text)' is not inet:host:port or unix:/path") }
        self.socket = socket
        _ = try config.int("protocol", default: 6, range: 6...6)
        defaultAction = DefaultAction(rawValue: try config.choice("default_action", DefaultAction.allCases.map(\.rawValue), default: "tempfail"))!
        connectTimeout = .milliseconds(try config.int("connect_timeout_ms", default: 30_000, range: 1...3_600_000))
        commandTimeout = .milliseconds(try config.int("command_timeout_ms", default: 30_000, range: 1...3_600_000))
        contentTimeout = .milliseconds(try config.int("content_timeout_ms", default: 300_000, range: 1...3_600_000))
        var macros: [Milter.MacroStage: [String]] = [:]
        let keys: [(String, Milter.MacroStage)] = [
            ("connect_macros", .connect), ("helo_macros", .helo), ("mail_macros", .mail), ("rcpt_macros", .rcpt),
            ("data_macros", .data), ("eoh_macros", .endOfHeaders), ("eom_macros", .endOfMessage),
        ]
        for (key, stage) in keys {
            macros[stage] = try config.strings(key, default: stage.defaultMacros)
        }
        self.macros = macros
        hostname = environment.hostname
        temporaryDirectory = environment.resolvePath(try config.string("temporary_directory", default: "/tmp"))
        stageName = try config.string("name", default: "milter")
    }

    private func session(_ info: SessionInfo) -> MilterSession? {
        info.state[StateKey<MilterSession>("milter.session.\(stageName)")]
    }

    /// What a failure means now (the milter is then left alone).
    func failure(_ session: MilterSession?, _ why: String) -> StageVerdict {
        session?.dead = true
        session?.close()
        switch defaultAction {
        case .accept: return .continue
        case .reject: return .reject(550, "5.7.1", "Service unavailable: content filter failed")
        case .tempfail: return .tempfail(451, "4.7.1", "Service unavailable - try again later")
        case .quarantine: return .quarantine(reason: "milter \(stageName) failed: \(why)")
        }
    }

    // MARK: Phases

    public func connect(session info: SessionInfo) async throws -> StageVerdict {
        let session = MilterSession(stage: self)
        info.state[StateKey<MilterSession>("milter.session.\(stageName)")] = session
        do {
            try await session.open()
            let family: UInt8 = info.clientAddress.contains(":") ? UInt8(ascii: "6") : UInt8(ascii: "4")
            var data = Milter.cStrings([info.clientAddress == "?" ? "unknown" : "[\(info.clientAddress)]"])
            data += [family, UInt8(info.clientPort >> 8 & 0xFF), UInt8(info.clientPort & 0xFF)]
            data += Milter.cStrings([info.clientAddress])
            return try await session.event(Milter.MacroStage.connect, data: data, macros: macroValues(info, transaction: nil))
        } catch {
            return failure(session, "\(error)")
        }
    }

    public func helo(session info: SessionInfo) async throws -> StageVerdict {
        guard let session = session(info), !session.dead else { return .continue }
        do {
            return try await session.event(Milter.MacroStage.helo, data: Milter.cStrings([info.heloName ?? ""]), macros: macroValues(info, transaction: nil))
        } catch {
            return failure(session, "\(error)")
        }
    }

    public func mailFrom(session info: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        guard let session = session(info), !session.dead else { return .continue }
        do {
            try await session.abortIfInTransaction()
            session.inTransaction = true
            var args = ["<\(transaction.sender.mailbox.map { "\($0)" } ?? "")>"]
            args += Self.parameters(transaction.mailParameters)
            return try await session.event(Milter.MacroStage.mail, data: Milter.cStrings(args), macros: macroValues(info, transaction: transaction))
        } catch {
            return failure(session, "\(error)")
        }
    }

    public func rcptTo(_ recipient: Recipient, session info: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        guard let session = session(info), !session.dead else { return .continue }
        do {
            let args = ["<\(recipient.mailbox)>"] + recipient.parameters.map { p in p.value.map { "\(p.keyword)=\($0)" } ?? p.keyword }
            var values = macroValues(info, transaction: transaction)
            values["{rcpt_addr}"] = "\(recipient.mailbox)"
            values["{rcpt_host}"] = recipient.mailbox.domain
            values["{rcpt_mailer}"] = "smtp"
            return try await session.event(Milter.MacroStage.rcpt, data: Milter.cStrings(args), macros: values)
        } catch {
            return failure(session, "\(error)")
        }
    }

    public func headers(_ headers: [HeaderField], session info: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        guard let session = session(info), !session.dead else { return .continue }
        do {
            let values = macroValues(info, transaction: transaction)
            var verdict = try await session.event(Milter.MacroStage.data, data: [], macros: values)
            guard verdict == .continue else { return verdict }
            for field in headers where !session.protocolFlags.contains(Milter.ProtocolFlags.noHeaders) {
                var value = field.value
                // Without HDR_LEADSPC the milter gets the value without the space after the colon.
                if !session.protocolFlags.contains(Milter.ProtocolFlags.headerLeadingSpace), value.hasPrefix(" ") { value.removeFirst() }
                verdict = try await session.send(Milter.Command.header, data: Milter.cStrings([field.name, value]), noReply: Milter.ProtocolFlags.noReplyHeader, skipped: Milter.ProtocolFlags.noHeaders)
                guard verdict == .continue else { return verdict }
            }
            return try await session.event(Milter.MacroStage.endOfHeaders, data: [], macros: values)
        } catch {
            return failure(session, "\(error)")
        }
    }

    public func bodyChunk(_ chunk: [UInt8], session info: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        guard let session = session(info), !session.dead, !session.skipBody else { return .continue }
        do {
            var rest = chunk[...]
            while !rest.isEmpty {
                let piece = Array(rest.prefix(Milter.chunkSize))
                rest = rest.dropFirst(piece.count)
                let verdict = try await session.send(Milter.Command.body, data: piece, noReply: Milter.ProtocolFlags.noReplyBody, skipped: Milter.ProtocolFlags.noBody)
                if session.skipBody { return .continue }
                guard verdict == .continue else { return verdict }
            }
            return .continue
        } catch {
            return failure(session, "\(error)")
        }
    }

    public func endOfMessage(_ message: MessageView, session info: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
        guard let session = session(info), !session.dead else { return StageDecision() }
        do {
            session.inTransaction = false
            return try await session.endOfMessage(macros: macroValues(info, transaction: transaction), headers: message.headers)
        } catch {
            return StageDecision(failure(session, "\(error)"))
        }
    }

    public func disconnect(session info: SessionInfo) async {
        guard let session = session(info) else { return }
        if !session.dead { try? await session.sendOnly(.quit) }
        session.close()
    }

    // MARK: Macros

    /// The macro values Sluice can give at this point.
    func macroValues(_ info: SessionInfo, transaction: TransactionInfo?) -> [String: String] {
        var m: [String: String] = [
            "j": hostname, "{daemon_name}": "sluice", "{daemon_addr}": info.serverAddress, "{daemon_port}": String(info.serverPort),
            "v": "Sluice", "_": "\(info.heloName ?? "unknown") [\(info.clientAddress)]",
            "{client_addr}": info.clientAddress, "{client_port}": String(info.clientPort), "{client_name}": "unknown",
            "{if_addr}": info.serverAddress,
        ]
        if let helo = info.heloName { m["s"] = helo }
        if let tls = info.tls {
            m["{tls_version}"] = tls.version
            m["{cipher}"] = tls.cipher
            m["{cipher_bits}"] = String(tls.bits)
        }
        if let user = info.authenticatedUser {
            m["{auth_authen}"] = user
            m["{auth_type}"] = info.authMechanism ?? "PLAIN"
            m["{auth_ssf}"] = "0"
        }
        if let tx = transaction {
            m["i"] = tx.queueID
            m["{mail_addr}"] = tx.sender.mailbox.map { "\($0)" } ?? ""
            m["{mail_host}"] = tx.sender.mailbox?.domain ?? ""
            m["{mail_mailer}"] = "smtp"
        }
        return m
    }

    static func parameters(_ p: MailParameters) -> [String] {
        var out: [String] = []
        if let size = p.size { out.append("SIZE=\(size)") }
        if let body = p.body { out.append("BODY=\(body.rawValue)") }
        if p.smtputf8 { out.append("SMTPUTF8") }
        if let auth = p.auth { out.append("AUTH=\(auth)") }
        return out
    }
}
