import SMTPCore
import SluiceSpool
import SluiceStageAPI

/// The SMTP session as a value: events in, actions out. It knows the protocol rules (RFC 5321
/// command order, RFC 2920 pipelining, RFC 3030 BDAT, limits, relay policy), follows the
/// message data (size, what data-phase stages get and said, `MessageData`) and keeps the stage
/// trace; it knows nothing of channels, stages' work or the disk. The channel handler carries
/// the actions out.
public struct SessionStateMachine: Sendable {
    /// What the handler must do next.
    public enum Action: Equatable, Sendable {
        /// Send the replies; close afterwards when `close`.
        case reply([SMTPReply], close: Bool)
        /// Run the chain at a phase, then call `stagesFinished`.
        case runStages(StagePhase)
        /// Run the RCPT phase for this recipient (routed to `destination`), then call `stagesFinished`.
        case runRecipientStages(Recipient, destination: Destination)
        /// Send the 354 and switch the framer to DATA.
        case startData(SMTPReply)
        /// Read a BDAT chunk of `size` octets (keeping it only when `store`), then call `bdatChunkRead`.
        case readChunk(size: UInt64, store: Bool, last: Bool)
        /// The message data is complete and clean: run end of message and spool, then call `messageFinished`.
        case finishMessage
        /// Send the reply in plaintext, drop any input buffered behind the command (RFC 3207 4.2:
        /// pipelined plaintext must not be answered inside TLS), start the TLS handshake, then
        /// call `tlsEstablished`.
        case startTLS(SMTPReply)
        /// Check the credentials (off the event loop), then call `authFinished`.
        case authenticate(user: String, password: String, mechanism: SASL.Mechanism)
        /// ETRN: start delivery of deferred mail for `domain`, then call `queueRunStarted`.
        case requestQueueRun(domain: String)
        case none

        static func send(_ r: SMTPReply) -> Action { .reply([r], close: false) }
        static func sendAndClose(_ r: SMTPReply) -> Action { .reply([r], close: true) }
    }

    /// How the message data went, as measured by the handler and the framer.
    public struct DataOutcome: Sendable {
        public var size: Int
        public var flags: MessageDataFlags
        /// A data-phase stage refused the message while it streamed.
        public var stageVerdict: StageVerdict
        public init(size: Int, flags: MessageDataFlags, stageVerdict: StageVerdict = .continue) {
            self.size = size
            self.flags = flags
            self.stageVerdict = stageVerdict
        }
    }

    /// How end of message and spooling went.
    public enum MessageResult: Sendable, Equatable {
        case queued(id: String)
        case quarantined(id: String)
        case discarded
        case refused(SMTPReply)
        /// A stage said disconnect: send the reply and close.
        case disconnect(SMTPReply)
        case spoolFailed
    }

    public struct Transaction: Sendable {
        public var queueID: String
        public var sender: ReversePath
        public var parameters: MailParameters
        public var recipients: [Recipient] = []
        /// Destination per recipient, by position.
        public var destinations: [Destination] = []
        public var rejectedRecipients = 0
        public var usedBDAT = false
        public var state = StageState()
        public var results = ResultRecorder()
        /// A discard or quarantine verdict given at MAIL or RCPT, applied at end of message.
        public var heldVerdict: StageVerdict?
        /// The message data being received (from DATA's 354 or the first stored BDAT chunk).
        public var data: MessageData?
        /// What the stages did in this transaction (MAIL on), in order.
        public var trace: [TraceEntry] = []
    }

    enum Phase: Sendable, Equatable {
        case connecting
        case command
        case waitingForStages(StagePhase)
        case data
        case bdatChunk(size: UInt64, last: Bool, refusal: SMTPReply?)
        case finishing
        case startingTLS
        /// ETRN asked the queue for a run.
        case startingQueueRun
        /// AUTH sent a 334 challenge; the next line is the client's response (RFC 4954 4).
        case authResponse(SASL.Mechanism, user: String?)
        case authenticating(SASL.Mechanism, user: String)
        case closed
    }

    public let configuration: SessionConfiguration
    public private(set) var session: SessionInfo
    public internal(set) var transaction: Transaction?
    private(set) var phase: Phase = .connecting
    /// What the stages did at connect and HELO: part of every transaction's trace.
    public private(set) var sessionTrace: [TraceEntry] = []
    private var pendingEHLO: String?
    /// The gateway is shutting down: the next command hears 421.
    private var shutdownPending = false
    private var pendingRecipient: (Recipient, Destination)?
    private var errors = 0
    /// A connect- or helo-phase verdict that applies to every later message.
    private var sessionVerdict: StageVerdict = .continue
    private let parser: SMTPCommandParser

    /// Whether this client may use ETRN (`[server] etrn_from`).
    private let etrnAllowed: Bool
    /// What the listener offers: STARTTLS, implicit TLS, AUTH.
    public let policy: ListenerPolicy

    /// Per listener: what the session offers and requires.
    public struct ListenerPolicy: Sendable, Equatable {
        /// STARTTLS is offered (a `[tls]` certificate is configured and TLS is not implicit).
        public var startTLS: Bool
        /// TLS from the first byte (`kind = "smtps"`).
        public var implicitTLS: Bool
        /// AUTH is offered (once TLS is active).
        public var auth: Bool
        /// MAIL needs AUTH first (submission and smtps listeners).
        public var requireAuth: Bool
        public init(startTLS: Bool = false, implicitTLS: Bool = false, auth: Bool = false, requireAuth: Bool = false) {
            self.startTLS = startTLS
            self.implicitTLS = implicitTLS
            self.auth = auth
            self.requireAuth = requireAuth
        }
    }

    public init(configuration: SessionConfiguration, session: SessionInfo, etrnAllowed: Bool = false, policy: ListenerPolicy = ListenerPolicy()) {
        self.configuration = configuration
        self.session = session
        self.etrnAllowed = etrnAllowed
        self.policy = policy
        self.parser = SMTPCommandParser(limits: configuration.limits)
    }

    public var isClosed: Bool { phase == .closed }

    public var transactionInfo: TransactionInfo? {
        transaction.map {
            TransactionInfo(queueID: $0.queueID, sender: $0.sender, mailParameters: $0.parameters,
                            recipients: $0.recipients, state: $0.state, results: $0.results)
        }
    }

    /// The `with` protocol for Received (RFC 3848 / RFC 6531): ESMTP, ESMTPS, ESMTPA, ESMTPSA,
    /// and the UTF8SMTP forms.
    public var protocolName: String {
        guard session.esmtp else { return "SMTP" }
        let base = transaction?.parameters.smtputf8 == true ? "UTF8SMTP" : "ESMTP"
        let suffix = (session.tls != nil ? "S" : "") + (session.authenticatedUser != nil ? "A" : "")
        return base + suffix
    }

    var greeting: SMTPReply { SMTPReply(220, nil, "\(configuration.hostname) ESMTP Sluice") }

    // MARK: Events

    /// The connection is up (after any greeting pause).
    public mutating func connected() -> Action {
        if configuration.hookedPhases.contains(.connect) {
            phase = .waitingForStages(.connect)
            return .runStages(.connect)
        }
        phase = .command
        return .send(greeting)
    }

    /// The client sent bytes before the greeting (RFC 5321 4.3.1: it must wait).
    public mutating func clientTalkedFirst() -> Action {
        phase = .closed
        return .sendAndClose(SMTPReply(554, "5.5.0", "Error: SMTP protocol synchronization: talked before the greeting"))
    }

    /// Counts an error reply; past `maxErrors` the session ends with 421.
    private mutating func fail(_ reply: SMTPReply) -> Action {
        errors += 1
        if errors >= configuration.maxErrors {
            phase = .closed
            return .reply([reply, SMTPReply(421, "4.7.0", "\(configuration.hostname) Error: too many errors")], close: true)
        }
        return .send(reply)
    }

    /// The gateway began shutting down: a session waiting for its next command with nothing
    /// buffered (`idle`) hears 421 now; any other hears it in answer to its next command.
    public mutating func shutdownRequested(idle: Bool) -> Action {
        shutdownPending = true
        guard idle, phase == .command else { return .none }
        phase = .closed
        return .sendAndClose(SMTPReply(421, "4.3.2", "\(configuration.hostname) Service shutting down, closing connection"))
    }

    /// A command line (or an over-long one) arrived.
    /// - Parameter pipelinedInput: more input was already buffered behind this line.
    public mutating func commandLine(_ line: [UInt8]?, pipelinedInput: Bool, shuttingDown: Bool = false) -> Action {
        if case .authResponse(let mechanism, let user) = phase {
            return authResponse(line, mechanism: mechanism, user: user)
        }
        guard phase == .command else { return .none }
        if shuttingDown || shutdownPending {
            phase = .closed
            return .sendAndClose(SMTPReply(421, "4.3.2", "\(configuration.hostname) Service shutting down, closing connection"))
        }
        guard let line else { return fail(SMTPReply(500, "5.5.2", "Error: line too long")) }
        let command: SMTPCommand
        do {
            command = try parser.parse(line, transactionUTF8: transaction?.parameters.smtputf8 ?? false)
        } catch {
            if error.closesConnection {
                phase = .closed
                return .sendAndClose(error.reply)
            }
            return fail(error.reply)
        }
        return handle(command, pipelinedInput: pipelinedInput)
    }

    private mutating func handle(_ command: SMTPCommand, pipelinedInput: Bool) -> Action {
        switch command {
        case .ehlo(let name), .helo(let name):
            let isEHLO = if case .ehlo = command { true } else { false }
            transaction = nil
            session.heloName = name
            session.esmtp = isEHLO
            pendingEHLO = isEHLO ? name : nil
            if configuration.hookedPhases.contains(.helo) {
                phase = .waitingForStages(.helo)
                return .runStages(.helo)
            }
            return .send(heloReply())
        case .mail(let path, let params):
            return mail(path, params)
        case .rcpt(let path, let params):
            return rcpt(path, params)
        case .data:
            return data(pipelinedInput: pipelinedInput)
        case .bdat(let size, let last):
            return bdat(size: size, last: last)
        case .rset:
            transaction = nil
            return .send(SMTPReply(250, "2.0.0", "Ok"))
        case .noop:
            return .send(SMTPReply(250, "2.0.0", "Ok"))
        case .quit:
            phase = .closed
            return .sendAndClose(SMTPReply(221, "2.0.0", "Bye"))
        case .vrfy:
            return .send(SMTPReply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"))
        case .expn:
            return fail(SMTPReply(502, "5.5.1", "Error: EXPN not supported"))
        case .help:
            return .send(SMTPReply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP ETRN"))
        case .etrn(let node):
            return etrn(node)
        case .starttls:
            return startTLS()
        case .auth(let argument):
            return auth(argument)
        case .turn:
            return fail(SMTPReply(502, "5.5.1", "Error: TURN not supported"))
        }
    }

    /// STARTTLS (RFC 3207).
    private mutating func startTLS() -> Action {
        guard policy.startTLS || policy.implicitTLS else { return fail(SMTPReply(502, "5.5.1", "Error: command not implemented")) }
        guard session.tls == nil else { return fail(SMTPReply(554, "5.5.1", "Error: TLS already active")) }
        guard transaction == nil else { return fail(SMTPReply(503, "5.5.1", "Error: MAIL transaction in progress")) }
        phase = .startingTLS
        return .startTLS(SMTPReply(220, "2.0.0", "Ready to start TLS"))
    }

    /// The TLS handshake finished. After STARTTLS the session starts over (RFC 3207 4.2): the
    /// client must send EHLO again, and nothing said before counts.
    public mutating func tlsEstablished(_ info: TLSInfo) -> Action {
        session.tls = info
        guard phase == .startingTLS else { return .none }  // implicit TLS: nothing to reset
        session.heloName = nil
        session.esmtp = false
        pendingEHLO = nil
        transaction = nil
        phase = .command
        return .none
    }

    /// AUTH (RFC 4954) with PLAIN (RFC 4616) or LOGIN, only inside TLS.
    private mutating func auth(_ argument: String) -> Action {
        guard policy.auth else { return fail(SMTPReply(502, "5.5.1", "Error: authentication not enabled")) }
        guard session.heloName != nil, session.esmtp else { return fail(SMTPReply(503, "5.5.1", "Error: send EHLO first")) }
        guard session.authenticatedUser == nil else { return fail(SMTPReply(503, "5.5.1", "Error: already authenticated")) }
        guard transaction == nil else { return fail(SMTPReply(503, "5.5.1", "Error: MAIL transaction in progress")) }
        guard session.tls != nil else {
            return fail(SMTPReply(538, "5.7.11", "Encryption required for requested authentication mechanism"))
        }
        if configuration.authBlocked?(session.clientAddress) == true {
            phase = .closed
            return .sendAndClose(SMTPReply(421, "4.7.0", "\(configuration.hostname) Error: too many authentication failures"))
        }
        let parts = argument.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard let name = parts.first, let mechanism = SASL.Mechanism(rawValue: name.uppercased()) else {
            return fail(SMTPReply(504, "5.5.4", "Unrecognized authentication type"))
        }
        let initial = parts.count > 1 ? Array(parts[1].utf8) : nil
        switch mechanism {
        case .plain:
            if let initial { return authResponse(initial, mechanism: .plain, user: nil) }
            phase = .authResponse(.plain, user: nil)
            return .send(SMTPReply(334, nil, ""))
        case .login:
            if let initial { return authResponse(initial, mechanism: .login, user: nil) }
            phase = .authResponse(.login, user: nil)
            return .send(SMTPReply(334, nil, SASL.encodeBase64(Array("Username:".utf8))))
        }
    }

    /// A SASL response line (or an initial response).
    private mutating func authResponse(_ line: [UInt8]?, mechanism: SASL.Mechanism, user: String?) -> Action {
        phase = .command
        guard let line else { return fail(SMTPReply(500, "5.5.6", "Error: authentication response too long")) }
        if line == [UInt8(ascii: "*")] { return fail(SMTPReply(501, "5.0.0", "Authentication aborted")) }
        let decoded: [UInt8]
        do {
            decoded = try SASL.decodeBase64(line)
        } catch {
            return fail(SMTPReply(501, "5.5.2", "Error: malformed authentication response (not base64)"))
        }
        switch mechanism {
        case .plain:
            guard let credentials = try? SASL.parsePlain(decoded) else {
                return fail(SMTPReply(501, "5.5.2", "Error: malformed PLAIN response"))
            }
            // Acting for another identity is not supported (RFC 4616 2: the server may refuse it).
            if !credentials.authorizationID.isEmpty && credentials.authorizationID != credentials.user {
                return fail(SMTPReply(535, "5.7.8", "Error: authentication failed: authorization identity not allowed"))
            }
            phase = .authenticating(.plain, user: credentials.user)
            return .authenticate(user: credentials.user, password: credentials.password, mechanism: .plain)
        case .login:
            guard let text = String(validating: decoded, as: UTF8.self), !text.isEmpty, text.utf8.count <= 255 else {
                return fail(SMTPReply(501, "5.5.2", "Error: malformed LOGIN response"))
            }
            guard let user else {
                phase = .authResponse(.login, user: text)
                return .send(SMTPReply(334, nil, SASL.encodeBase64(Array("Password:".utf8))))
            }
            phase = .authenticating(.login, user: user)
            return .authenticate(user: user, password: text, mechanism: .login)
        }
    }

    /// How checking the credentials went.
    public enum AuthResult: Sendable, Equatable {
        case success
        case failure
        /// Too many failures from this client: 421 and close.
        case tooManyFailures
    }

    public mutating func authFinished(_ result: AuthResult) -> Action {
        guard case .authenticating(let mechanism, let user) = phase else { return .none }
        phase = .command
        switch result {
        case .success:
            session.authenticatedUser = user
            session.authMechanism = mechanism.rawValue
            session.trustedClient = true  // may relay (RFC 6409)
            return .send(SMTPReply(235, "2.7.0", "Authentication successful"))
        case .failure:
            return fail(SMTPReply(535, "5.7.8", "Error: authentication failed"))
        case .tooManyFailures:
            phase = .closed
            return .sendAndClose(SMTPReply(421, "4.7.0", "\(configuration.hostname) Error: too many authentication failures"))
        }
    }

    /// ETRN (RFC 1985): `ETRN example.test` or `ETRN @example.test`.
    private mutating func etrn(_ node: String) -> Action {
        guard configuration.offersETRN else { return fail(SMTPReply(502, "5.5.1", "Error: command not implemented")) }
        guard session.heloName != nil else { return fail(SMTPReply(503, "5.5.1", "Error: send HELO/EHLO first")) }
        guard transaction == nil else { return fail(SMTPReply(503, "5.5.1", "Error: MAIL transaction in progress")) }
        var domain = node
        if domain.hasPrefix("@") { domain.removeFirst() }
        guard !domain.isEmpty, !domain.hasPrefix("#"),
              domain.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" })
        else { return fail(SMTPReply(501, "5.5.4", "Syntax: ETRN domain")) }
        guard etrnAllowed else {
            return fail(SMTPReply(459, "4.7.1", "Node \(domain) not allowed: client not in etrn_from"))
        }
        phase = .startingQueueRun
        return .requestQueueRun(domain: domain)
    }

    /// The queue started delivery of `messages` deferred messages for `domain` (ETRN).
    public mutating func queueRunStarted(_ domain: String, messages: Int) -> Action {
        guard phase == .startingQueueRun else { return .none }
        phase = .command
        if messages == 0 { return .send(SMTPReply(251, "2.0.0", "OK, no messages waiting for node \(domain)")) }
        return .send(SMTPReply(250, "2.0.0", "OK, queuing for node \(domain) started"))
    }

    /// ETRN: the queue could not be asked (RFC 1985: 458).
    public mutating func queueRunFailed(_ domain: String) -> Action {
        guard phase == .startingQueueRun else { return .none }
        phase = .command
        return .send(SMTPReply(458, "4.3.0", "Unable to queue messages for node \(domain)"))
    }

    private func heloReply() -> SMTPReply {
        guard pendingEHLO != nil else { return SMTPReply(250, nil, configuration.hostname) }
        var lines = [configuration.hostname, "PIPELINING", "SIZE \(configuration.maxMessageBytes)"]
        lines += configuration.stageKeywords
        lines += ["8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES", "CHUNKING"]
        if configuration.offersETRN { lines.append("ETRN") }
        if policy.startTLS && session.tls == nil { lines.append("STARTTLS") }
        if policy.auth && session.tls != nil { lines.append("AUTH PLAIN LOGIN") }
        return SMTPReply(250, nil, lines)
    }

    private mutating func mail(_ path: ReversePath, _ params: MailParameters) -> Action {
        guard session.heloName != nil else { return fail(SMTPReply(503, "5.5.1", "Error: send HELO/EHLO first")) }
        if policy.requireAuth && session.authenticatedUser == nil {
            return fail(SMTPReply(530, "5.7.0", "Authentication required"))
        }
        if let user = session.authenticatedUser, let allows = configuration.senderLogin, !allows(user, path) {
            return fail(SMTPReply(553, "5.7.1", "<\(path.mailbox.map { "\($0)" } ?? "")>: Sender address rejected: not owned by user \(user)"))
        }
        guard transaction == nil else { return fail(SMTPReply(503, "5.5.1", "Error: nested MAIL command")) }
        if let unknown = params.other.first {
            return fail(SMTPReply(555, "5.5.4", "Unsupported option: \(unknown.keyword)"))
        }
        if (params.smtputf8 || params.body != nil || params.ret != nil || params.envelopeID != nil) && !session.esmtp {
            return fail(SMTPReply(555, "5.5.4", "ESMTP parameters need EHLO"))
        }
        if let size = params.size, size > UInt64(configuration.maxMessageBytes) {
            return fail(SMTPReply(552, "5.3.4", "Message size exceeds fixed limit"))
        }
        switch sessionVerdict {
        case .reject(let r), .tempfail(let r): return fail(r)
        default: break
        }
        guard configuration.hasFreeSpace() else {
            return fail(SMTPReply(452, "4.3.1", "Error: insufficient system storage"))
        }
        guard configuration.queueAvailable() else {
            return fail(SMTPReply(451, "4.3.0", "Error: queue unavailable, try again later"))
        }
        transaction = Transaction(queueID: configuration.makeQueueID(), sender: path, parameters: params)
        if configuration.hookedPhases.contains(.mailFrom) {
            phase = .waitingForStages(.mailFrom)
            return .runStages(.mailFrom)
        }
        return .send(SMTPReply(250, "2.1.0", "Ok"))
    }

    private mutating func rcpt(_ path: ForwardPath, _ rawParameters: [ESMTPParameter]) -> Action {
        guard var tx = transaction else { return fail(SMTPReply(503, "5.5.1", "Error: need MAIL command")) }
        let params: [ESMTPParameter]
        switch RecipientDSN.validate(rawParameters, utf8: tx.parameters.smtputf8) {
        case .success(let checked): params = checked
        case .failure(let error): return fail(error.reply)
        }
        if let unknown = params.first(where: { $0.keyword != "NOTIFY" && $0.keyword != "ORCPT" }) {
            return fail(SMTPReply(555, "5.5.4", "Unsupported option: \(unknown.keyword)"))
        }
        if !params.isEmpty && !session.esmtp {
            return fail(SMTPReply(555, "5.5.4", "ESMTP parameters need EHLO"))
        }
        guard tx.recipients.count < configuration.maxRecipients else {
            return fail(SMTPReply(452, "4.5.3", "Error: too many recipients"))
        }
        let mailbox: Mailbox
        switch path {
        case .mailbox(let m): mailbox = m
        case .postmaster:
            guard let domain = configuration.routes.primaryDomain else {
                return fail(SMTPReply(550, "5.1.1", "<Postmaster>: no local domain"))
            }
            mailbox = Mailbox(localPart: "postmaster", domain: domain)
        }
        let destination: Destination
        switch configuration.routes.destination(for: mailbox, trusted: session.trustedClient) {
        case .success(let d): destination = d
        case .failure(let reply):
            tx.rejectedRecipients += 1
            transaction = tx
            return fail(reply)
        }
        let recipient = Recipient(mailbox, parameters: params)
        if configuration.hookedPhases.contains(.rcptTo) {
            pendingRecipient = (recipient, destination)
            phase = .waitingForStages(.rcptTo)
            return .runRecipientStages(recipient, destination: destination)
        }
        return addRecipient(recipient, destination)
    }

    private mutating func addRecipient(_ recipient: Recipient, _ destination: Destination) -> Action {
        transaction?.recipients.append(recipient)
        transaction?.destinations.append(destination)
        return .send(SMTPReply(250, "2.1.5", "Ok"))
    }

    private func noRecipientsReply() -> SMTPReply {
        if let tx = transaction, tx.rejectedRecipients > 0 {
            return SMTPReply(554, "5.5.1", "Error: no valid recipients")
        }
        return SMTPReply(503, "5.5.1", transaction == nil ? "Error: need MAIL command" : "Error: need RCPT command")
    }

    private mutating func data(pipelinedInput: Bool) -> Action {
        guard let tx = transaction, !tx.recipients.isEmpty else { return fail(noRecipientsReply()) }
        if tx.usedBDAT { return fail(SMTPReply(503, "5.5.1", "Error: DATA after BDAT")) }
        if pipelinedInput && configuration.disconnectOnPipeliningViolation {
            phase = .closed
            return .sendAndClose(SMTPReply(554, "5.5.0", "Error: SMTP protocol synchronization: input after DATA before the 354"))
        }
        phase = .data
        transaction?.data = MessageData()
        return .startData(SMTPReply(354, nil, "End data with <CR><LF>.<CR><LF>"))
    }

    private mutating func bdat(size: UInt64, last: Bool) -> Action {
        var refusal: SMTPReply?
        if transaction == nil || transaction!.recipients.isEmpty {
            refusal = noRecipientsReply()
        } else {
            transaction!.usedBDAT = true
            if transaction!.data == nil { transaction!.data = MessageData() }
        }
        phase = .bdatChunk(size: size, last: last, refusal: refusal)
        return .readChunk(size: size, store: refusal == nil, last: last)
    }

    /// A BDAT chunk has been read (and, if accepted, stored by the handler).
    /// - Parameter outcome: the message so far; judged when this was the LAST chunk.
    public mutating func bdatChunkRead(chunkSize: UInt64, outcome: @autoclosure () -> DataOutcome) -> Action {
        guard case .bdatChunk(_, let last, let refusal) = phase else { return .none }
        phase = .command
        if let refusal { return fail(refusal) }
        if last { return dataFinished(outcome()) }
        return .send(SMTPReply(250, "2.0.0", "\(chunkSize) octets received"))
    }

    /// The data of a DATA or BDAT-LAST message is complete; decides whether it can be spooled.
    public mutating func dataFinished(_ outcome: DataOutcome) -> Action {
        phase = .command
        let refusal: SMTPReply?
        if outcome.flags.bareCR || outcome.flags.bareLF {
            refusal = SMTPReply(550, "5.6.0", "Error: message contains bare CR or bare LF; only CRLF ends a line (RFC 5321 2.3.8)")
        } else if outcome.flags.nul {
            refusal = SMTPReply(550, "5.6.0", "Error: message contains NUL octets")
        } else if outcome.flags.longLine {
            refusal = SMTPReply(550, "5.6.0", "Error: message has a line longer than the limit of RFC 5321 4.5.3.1.6")
        } else if outcome.size > configuration.maxMessageBytes {
            refusal = SMTPReply(552, "5.3.4", "Error: message size exceeds fixed limit")
        } else {
            switch outcome.stageVerdict {
            case .reject(let r), .tempfail(let r): refusal = r
            case .disconnect(let r):
                transaction = nil
                phase = .closed
                return .sendAndClose(r)
            default: refusal = nil
            }
        }
        if let refusal {
            transaction = nil
            return fail(refusal)
        }
        phase = .finishing
        return .finishMessage
    }

    /// End of message and spooling are done.
    public mutating func messageFinished(_ result: MessageResult) -> Action {
        phase = .command
        transaction = nil
        switch result {
        case .queued(let id): return .send(SMTPReply(250, "2.0.0", "Ok: queued as \(id)"))
        case .quarantined(let id): return .send(SMTPReply(250, "2.0.0", "Ok: queued as \(id)"))
        case .discarded: return .send(SMTPReply(250, "2.0.0", "Ok: discarded"))
        case .disconnect(let reply):
            phase = .closed
            return .sendAndClose(reply)
        case .refused(let reply):
            if reply.code == 421 {
                phase = .closed
                return .sendAndClose(reply)
            }
            return fail(reply)
        case .spoolFailed:
            return .send(SMTPReply(451, "4.3.0", "Error: queue file write error"))
        }
    }

    /// The stages of the phase being waited for have answered, with what they did.
    public mutating func stagesFinished(_ verdict: StageVerdict, trace: [TraceEntry] = []) -> Action {
        guard case .waitingForStages(let stagePhase) = phase else { return .none }
        phase = .command
        if stagePhase == .connect || stagePhase == .helo { sessionTrace += trace } else { transaction?.trace += trace }
        if case .disconnect(let reply) = verdict {
            phase = .closed
            return .sendAndClose(reply)
        }
        // A stage's 421 means the service is closing the channel (RFC 5321 3.8).
        if case .tempfail(let r) = verdict, r.code == 421 {
            phase = .closed
            return .sendAndClose(r)
        }
        switch stagePhase {
        case .connect:
            switch verdict {
            case .reject(let r):
                phase = .closed
                // At connection only 220 and 554 are allowed (RFC 5321 4.3.2).
                return .sendAndClose(r.code == 554 ? r : SMTPReply(554, r.enhancedCode, r.lines))
            case .tempfail(let r):
                phase = .closed
                return .sendAndClose(SMTPReply(421, r.enhancedCode, r.lines))
            case .discard, .quarantine: sessionVerdict = verdict
            default: break
            }
            return .send(greeting)
        case .helo:
            switch verdict {
            case .reject(let r), .tempfail(let r):
                session.heloName = nil
                pendingEHLO = nil
                return fail(r)
            case .discard, .quarantine: sessionVerdict = verdict
            default: break
            }
            return .send(heloReply())
        case .mailFrom:
            switch verdict {
            case .reject(let r), .tempfail(let r):
                transaction = nil
                return fail(r)
            default:
                hold(verdict)
                return .send(SMTPReply(250, "2.1.0", "Ok"))
            }
        case .rcptTo:
            guard let (recipient, destination) = pendingRecipient else { return .none }
            pendingRecipient = nil
            switch verdict {
            case .reject(let r), .tempfail(let r):
                transaction?.rejectedRecipients += 1
                return fail(r)
            default:
                hold(verdict)
                return addRecipient(recipient, destination)
            }
        default:
            return .none
        }
    }

    private mutating func hold(_ verdict: StageVerdict) {
        switch verdict {
        case .discard, .quarantine: transaction?.heldVerdict = verdict
        default: break
        }
    }

    /// A discard or quarantine that applies to the current message: from MAIL/RCPT, else from connect/HELO.
    public var heldVerdict: StageVerdict? {
        if let v = transaction?.heldVerdict { return v }
        switch sessionVerdict {
        case .discard, .quarantine: return sessionVerdict
        default: return nil
        }
    }

    /// The client went silent for too long.
    public mutating func timedOut() -> Action {
        phase = .closed
        return .sendAndClose(SMTPReply(421, "4.4.2", "\(configuration.hostname) Error: timeout exceeded"))
    }
}
