import SMTPCore
import SluiceServer
import SluiceStageAPI
import Testing

// MARK: Driving the machine with no channel

typealias Action = SessionStateMachine.Action

let hostname = "mx.example.test"

let standardRoutes = RouteTable([
    RouteTable.Route(domains: ["example.test", "Other.Example"], destination: "maildir:/srv/mail"),
    RouteTable.Route(domains: ["*"], destination: "maildir:/srv/relay"),
])

func configuration(
    routes: RouteTable = standardRoutes, hooked: Set<StagePhase> = [], maxRecipients: Int = 100, maxErrors: Int = 10,
    maxMessageBytes: Int = 10_000, stageKeywords: [String] = [], disconnectOnPipeliningViolation: Bool = true
) -> SessionConfiguration {
    var c = SessionConfiguration(hostname: hostname, routes: routes)
    c.hookedPhases = hooked
    c.maxRecipients = maxRecipients
    c.maxErrors = maxErrors
    c.maxMessageBytes = maxMessageBytes
    c.stageKeywords = stageKeywords
    c.disconnectOnPipeliningViolation = disconnectOnPipeliningViolation
    c.makeQueueID = { "QID1" }
    return c
}

/// A compact, readable form of an action: `250 2.1.0`, `500 5.5.2 | 421 4.7.0 close`, `run mail`, ...
func describe(_ action: Action) -> String {
    switch action {
    case .reply(let replies, let close):
        let text = replies.map { r in ([String(r.code)] + [r.enhancedCode?.description].compactMap { $0 }).joined(separator: " ") }
        return text.joined(separator: " | ") + (close ? " close" : "")
    case .runStages(let phase): return "run \(phase.rawValue)"
    case .runRecipientStages(let r, let destination): return "run rcpt \(r.mailbox) -> \(destination)"
    case .startData(let r): return "start data \(r.code)"
    case .readChunk(let size, let store, let last): return "read \(size)\(store ? "" : " discard")\(last ? " last" : "")"
    case .finishMessage: return "finish"
    case .startTLS(let r): return "starttls \(r.code)"
    case .authenticate(let user, let password, let mechanism): return "authenticate \(mechanism.rawValue) \(user):\(password)"
    case .requestQueueRun(let domain): return "queue run \(domain)"
    case .none: return "none"
    }
}

func replies(_ action: Action) -> [SMTPReply] {
    switch action {
    case .reply(let r, _): r
    case .startData(let r): [r]
    default: []
    }
}

struct Session {
    var machine: SessionStateMachine

    init(
        _ configuration: SessionConfiguration = configuration(), trusted: Bool = false, clientAddress: String = "192.0.2.10",
        policy: SessionStateMachine.ListenerPolicy = .init()
    ) {
        let info = SessionInfo(
            id: "S1", clientAddress: clientAddress, clientPort: 40000, serverAddress: "198.51.100.1", serverPort: 25,
            serverHostname: hostname, trustedClient: trusted
        )
        machine = SessionStateMachine(configuration: configuration, session: info, policy: policy)
    }

    /// Sends a command line; returns the action, described.
    @discardableResult
    mutating func send(_ line: String, pipelined: Bool = false) -> String {
        describe(machine.commandLine(Array(line.utf8), pipelinedInput: pipelined))
    }

    mutating func sendAction(_ line: String, pipelined: Bool = false) -> Action {
        machine.commandLine(Array(line.utf8), pipelinedInput: pipelined)
    }

    /// Greeting, EHLO, MAIL and one accepted recipient, with no stages hooked.
    static func inTransaction(_ configuration: SessionConfiguration = configuration(), trusted: Bool = false) -> Session {
        var s = Session(configuration, trusted: trusted)
        _ = s.machine.connected()
        _ = s.send("EHLO client.test")
        _ = s.send("MAIL FROM:<sender@client.test>")
        _ = s.send("RCPT TO:<user@example.test>")
        return s
    }
}

func outcome(size: Int = 100, _ f: MessageDataFlags = MessageDataFlags(), verdict: StageVerdict = .continue) -> SessionStateMachine.DataOutcome {
    SessionStateMachine.DataOutcome(size: size, flags: f, stageVerdict: verdict)
}

func badFlags(bareCR: Bool = false, bareLF: Bool = false, nul: Bool = false, longLine: Bool = false) -> MessageDataFlags {
    var f = MessageDataFlags()
    f.bareCR = bareCR
    f.bareLF = bareLF
    f.nul = nul
    f.longLine = longLine
    return f
}

@Suite("SessionStateMachine")
struct SessionStateMachineTests {
    // MARK: Greeting and connect stages

    @Test func greetingWithoutConnectStages() {
        var s = Session()
        let action = s.machine.connected()
        #expect(describe(action) == "220")
        #expect(replies(action).first?.lines == ["mx.example.test ESMTP Sluice"])
    }

    @Test func connectStagesRunBeforeTheGreeting() {
        var s = Session(configuration(hooked: [.connect]))
        #expect(describe(s.machine.connected()) == "run connect")
        #expect(s.send("EHLO early.test") == "none", "commands wait while stages run")
        #expect(describe(s.machine.stagesFinished(.continue)) == "220")
        #expect(s.send("EHLO client.test").hasPrefix("250"))
    }

    @Test func connectRejectClosesWithTheStageReply() {
        var s = Session(configuration(hooked: [.connect]))
        _ = s.machine.connected()
        #expect(describe(s.machine.stagesFinished(.reject(554, "5.7.1", "Access denied"))) == "554 5.7.1 close")
        #expect(s.machine.isClosed)
    }

    @Test func connectTempfailBecomes421() {
        var s = Session(configuration(hooked: [.connect]))
        _ = s.machine.connected()
        let action = s.machine.stagesFinished(.tempfail(450, "4.7.1", "Try later"))
        #expect(describe(action) == "421 4.7.1 close")
        #expect(replies(action).first?.lines == ["Try later"])
    }

    @Test func connectDisconnectVerdict() {
        var s = Session(configuration(hooked: [.connect]))
        _ = s.machine.connected()
        #expect(describe(s.machine.stagesFinished(.disconnect(SMTPReply(421, "4.7.0", "Go away")))) == "421 4.7.0 close")
    }

    @Test func connectDiscardAppliesToLaterMessages() {
        var s = Session(configuration(hooked: [.connect]))
        _ = s.machine.connected()
        #expect(describe(s.machine.stagesFinished(.discard)) == "220")
        s.send("EHLO client.test")
        s.send("MAIL FROM:<sender@client.test>")
        #expect(s.machine.heldVerdict == .discard)
    }

    @Test func clientTalkingFirstIsRefused() {
        var s = Session()
        #expect(describe(s.machine.clientTalkedFirst()) == "554 5.5.0 close")
        #expect(s.machine.isClosed)
    }

    // MARK: HELO/EHLO

    @Test func ehloKeywords() {
        var s = Session(configuration(maxMessageBytes: 1_000_000, stageKeywords: ["X-STAGE"]))
        _ = s.machine.connected()
        let action = s.sendAction("EHLO client.test")
        #expect(describe(action) == "250")
        #expect(replies(action).first?.lines == [
            "mx.example.test", "PIPELINING", "SIZE 1000000", "X-STAGE", "8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES", "CHUNKING",
        ])
        #expect(s.machine.session.heloName == "client.test")
        #expect(s.machine.session.esmtp)
        #expect(s.machine.protocolName == "ESMTP")
    }

    @Test func heloIsOneLine() {
        var s = Session()
        _ = s.machine.connected()
        let action = s.sendAction("HELO client.test")
        #expect(replies(action).first?.lines == ["mx.example.test"])
        #expect(!s.machine.session.esmtp)
        #expect(s.machine.protocolName == "SMTP")
    }

    @Test func utf8TransactionProtocolName() {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<pelé@client.test> SMTPUTF8")
        #expect(s.machine.protocolName == "UTF8SMTP")
    }

    // MARK: DSN (RFC 3461)

    @Test func dsnParametersAreKept() {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        #expect(s.send("MAIL FROM:<a@client.test> RET=hdrs ENVID=QQ+2B314") == "250 2.1.0")
        #expect(s.machine.transaction?.parameters.ret == .headers)
        #expect(s.machine.transaction?.parameters.envelopeID == "QQ+314")
        #expect(s.send("RCPT TO:<u@example.test> NOTIFY=failure,Delay ORCPT=rfc822;u+2Bx@example.test") == "250 2.1.5")
        #expect(s.machine.transaction?.recipients.first?.parameters == [
            ESMTPParameter(keyword: "NOTIFY", value: "FAILURE,DELAY"), ESMTPParameter(keyword: "ORCPT", value: "rfc822;u+2Bx@example.test"),
        ])
        let dsn = RecipientDSN(parameters: s.machine.transaction!.recipients[0].parameters)
        #expect(dsn.events == [.failure, .delay])
        #expect(dsn.originalRecipient == .init(type: "rfc822", address: "u+x@example.test"))
        #expect(s.send("RCPT TO:<v@example.test> NOTIFY=NEVER") == "250 2.1.5")
        #expect(RecipientDSN(parameters: s.machine.transaction!.recipients[1].parameters).events == .never)
    }

    @Test(arguments: [
        ("MAIL FROM:<a@client.test> RET=BODY", "501 5.5.4"),
        ("MAIL FROM:<a@client.test> RET", "501 5.5.4"),
        ("MAIL FROM:<a@client.test> ENVID=a+zz", "501 5.5.4"),
        ("MAIL FROM:<a@client.test> ENVID=" + String(repeating: "x", count: 101), "501 5.5.4"),
        ("MAIL FROM:<a@client.test> ENVID=caf\u{e9}", "501 5.5.4"),
        ("MAIL FROM:<a@client.test> RET=FULL RET=HDRS", "501 5.5.4"),
    ])
    func badMailDSNParameters(_ line: String, _ expected: String) {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        #expect(s.send(line) == expected)
    }

    @Test(arguments: [
        ("RCPT TO:<u@example.test> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
        ("RCPT TO:<u@example.test> NOTIFY=SOMETIMES", "501 5.5.4"),
        ("RCPT TO:<u@example.test> NOTIFY=", "501 5.5.4"),
        ("RCPT TO:<u@example.test> NOTIFY", "501 5.5.4"),
        ("RCPT TO:<u@example.test> ORCPT=u@example.test", "501 5.5.4"),
        ("RCPT TO:<u@example.test> ORCPT=rfc822;", "501 5.5.4"),
        ("RCPT TO:<u@example.test> ORCPT=rfc822;a+4", "501 5.5.4"),
        ("RCPT TO:<u@example.test> ORCPT=rfc822;j\u{f6}rg@example.test", "501 5.5.4"),
        ("RCPT TO:<u@example.test> XFOO=1", "555 5.5.4"),
        ("RCPT TO:<u@example.test> NOTIFY=SUCCESS ORCPT=rfc822;u@example.test", "250 2.1.5"),
    ])
    func rcptDSNParameters(_ line: String, _ expected: String) {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<a@client.test>")
        #expect(s.send(line) == expected)
    }

    @Test func utf8OriginalRecipientNeedsSMTPUTF8() {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<a@client.test> SMTPUTF8 ENVID=caf\u{e9}")
        #expect(s.machine.transaction?.parameters.envelopeID == "caf\u{e9}")
        #expect(s.send("RCPT TO:<u@example.test> ORCPT=utf-8;j\u{f6}rg@example.test") == "250 2.1.5")
    }

    @Test func dsnParametersNeedEHLO() {
        var s = Session()
        _ = s.machine.connected()
        s.send("HELO client.test")
        #expect(s.send("MAIL FROM:<a@client.test> RET=FULL") == "555 5.5.4")
        s.send("MAIL FROM:<a@client.test>")
        #expect(s.send("RCPT TO:<u@example.test> NOTIFY=NEVER") == "555 5.5.4")
    }

    @Test func heloStageReject() {
        var s = Session(configuration(hooked: [.helo]))
        _ = s.machine.connected()
        #expect(s.send("EHLO bad.test") == "run helo")
        #expect(describe(s.machine.stagesFinished(.reject(550, "5.7.1", "Bad HELO"))) == "550 5.7.1")
        #expect(s.machine.session.heloName == nil)
        #expect(s.send("MAIL FROM:<sender@client.test>") == "503 5.5.1")
    }

    @Test func heloStageContinueGivesTheEHLOReply() {
        var s = Session(configuration(hooked: [.helo]))
        _ = s.machine.connected()
        #expect(s.send("EHLO client.test") == "run helo")
        let action = s.machine.stagesFinished(.accept)
        #expect(replies(action).first?.lines.contains("CHUNKING") == true)
    }

    @Test func ehloResetsTheTransaction() {
        var s = Session.inTransaction()
        s.send("EHLO client.test")
        #expect(s.machine.transaction == nil)
        #expect(s.send("RCPT TO:<user@example.test>") == "503 5.5.1")
    }

    // MARK: Command order (RFC 5321 4.1.4)

    @Test func commandOrder() {
        var s = Session()
        _ = s.machine.connected()
        #expect(s.send("MAIL FROM:<sender@client.test>") == "503 5.5.1", "MAIL before HELO")
        #expect(s.send("RCPT TO:<user@example.test>") == "503 5.5.1", "RCPT before MAIL")
        #expect(s.send("DATA") == "503 5.5.1", "DATA before MAIL")
        s.send("EHLO client.test")
        #expect(s.send("MAIL FROM:<sender@client.test>") == "250 2.1.0")
        #expect(s.send("MAIL FROM:<sender@client.test>") == "503 5.5.1", "nested MAIL")
        #expect(s.send("DATA") == "503 5.5.1", "DATA before RCPT")
        #expect(s.send("RCPT TO:<user@example.test>") == "250 2.1.5")
        #expect(s.send("RSET") == "250 2.0.0")
        #expect(s.send("RCPT TO:<user@example.test>") == "503 5.5.1", "RCPT after RSET")
    }

    @Test func otherCommands() {
        var s = Session()
        _ = s.machine.connected()
        #expect(s.send("NOOP") == "250 2.0.0")
        #expect(s.send("VRFY user") == "252 2.5.0")
        #expect(s.send("EXPN staff") == "502 5.5.1")
        #expect(s.send("HELP") == "214 2.0.0")
        #expect(s.send("STARTTLS") == "502 5.5.1")
        #expect(s.send("AUTH PLAIN") == "502 5.5.1")
        #expect(s.send("ETRN example.test") == "502 5.5.1")
        #expect(s.send("TURN") == "502 5.5.1")
        #expect(s.send("FOO") == "500 5.5.2")
        #expect(describe(s.machine.commandLine(nil, pipelinedInput: false)) == "500 5.5.2", "an over-long line")
        #expect(s.send("QUIT") == "221 2.0.0 close")
        #expect(s.machine.isClosed)
        #expect(s.send("NOOP") == "none", "nothing after close")
    }

    @Test func bdatWithUnreadableSizeCloses() {
        var s = Session.inTransaction()
        #expect(s.send("BDAT x") == "501 5.5.4 close")
        #expect(s.machine.isClosed)
    }

    @Test func shuttingDownAnswers421() {
        var s = Session()
        _ = s.machine.connected()
        #expect(describe(s.machine.commandLine(Array("NOOP".utf8), pipelinedInput: false, shuttingDown: true)) == "421 4.3.2 close")
    }

    @Test func aShutdownAnswersAnIdleSessionAtOnceAndABusyOneAtItsNextCommand() {
        var idle = Session()
        _ = idle.machine.connected()
        #expect(describe(idle.machine.shutdownRequested(idle: true)) == "421 4.3.2 close")
        #expect(idle.machine.isClosed)

        var busy = Session.inTransaction()
        #expect(describe(busy.machine.shutdownRequested(idle: false)) == "none")
        #expect(busy.send("RCPT TO:<b@example.test>") == "421 4.3.2 close")

        var greeting = Session()
        #expect(describe(greeting.machine.shutdownRequested(idle: true)) == "none", "not yet greeted: nothing to answer")
        _ = greeting.machine.connected()
        #expect(greeting.send("NOOP") == "421 4.3.2 close")
    }

    @Test func timeout() {
        var s = Session.inTransaction()
        #expect(describe(s.machine.timedOut()) == "421 4.4.2 close")
        #expect(s.machine.isClosed)
    }

    // MARK: MAIL parameters

    @Test func mailParameters() {
        var s = Session(configuration(maxMessageBytes: 1000))
        _ = s.machine.connected()
        s.send("EHLO client.test")
        #expect(s.send("MAIL FROM:<sender@client.test> SIZE=1001") == "552 5.3.4")
        #expect(s.send("MAIL FROM:<sender@client.test> X-UNKNOWN=1") == "555 5.5.4")
        #expect(s.send("MAIL FROM:<sender@client.test> BODY=BINARYMIME") == "555 5.5.4")
        #expect(s.send("MAIL FROM:<sender@client.test> SIZE=1000 BODY=8BITMIME") == "250 2.1.0")
        #expect(s.send("RCPT TO:<user@example.test> X-UNKNOWN=1") == "555 5.5.4")
        #expect(s.send("RCPT TO:<user@example.test> NOTIFY=NEVER") == "250 2.1.5")
    }

    @Test func mailWhenTheSpoolIsShortOfSpace() {
        var c = configuration()
        c.hasFreeSpace = { false }
        var s = Session(c)
        _ = s.machine.connected()
        s.send("EHLO client.test")
        #expect(s.send("MAIL FROM:<sender@client.test>") == "452 4.3.1")
        #expect(s.machine.transaction == nil)
        #expect(s.send("RCPT TO:<user@example.test>") == "503 5.5.1")
    }

    @Test func esmtpParametersNeedEHLO() {
        var s = Session()
        _ = s.machine.connected()
        s.send("HELO client.test")
        #expect(s.send("MAIL FROM:<sender@client.test> BODY=8BITMIME") == "555 5.5.4")
        #expect(s.send("MAIL FROM:<sender@client.test> SMTPUTF8") == "555 5.5.4")
    }

    @Test func utf8RecipientsFollowTheTransaction() {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<sender@client.test>")
        #expect(s.send("RCPT TO:<用户@example.test>") == "553 5.6.7")
        s.send("RSET")
        s.send("MAIL FROM:<sender@client.test> SMTPUTF8")
        #expect(s.send("RCPT TO:<用户@example.test>") == "250 2.1.5")
    }

    // MARK: Relay policy

    static let untrustedRefusals = [
        "RCPT TO:<user@other.test>",
        "RCPT TO:<user%other.test@example.test>",
        #"RCPT TO:<"user@other.test"@example.test>"#,
        "RCPT TO:<@route.test:user@other.test>",
        "RCPT TO:<other.test!user@example.test>",
        "RCPT TO:<user@[192.0.2.1]>",
        "RCPT TO:<user@[IPv6:2001:db8::1]>",
        "RCPT TO:<user@sub.example.test>",
    ]

    @Test(arguments: untrustedRefusals) func relayRefusedForUntrustedClients(_ line: String) {
        var s = Session.inTransaction()
        let action = s.sendAction(line)
        #expect(describe(action) == "554 5.7.1")
        #expect(replies(action).first?.lines.first?.contains("Relay access denied") == true)
        #expect(s.machine.transaction?.recipients.count == 1, "only the first recipient was accepted")
    }

    @Test(arguments: [
        "RCPT TO:<user@example.test>",
        "RCPT TO:<User@EXAMPLE.TEST>",
        "RCPT TO:<user@other.example>",
        "RCPT TO:<@relay.test:user@example.test>",
        "RCPT TO:<Postmaster>",
    ])
    func localDomainsAcceptedFromAnyone(_ line: String) {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<sender@client.test>")
        #expect(s.send(line) == "250 2.1.5")
        #expect(s.machine.transaction?.destinations == ["maildir:/srv/mail"])
    }

    @Test func postmasterGoesToThePrimaryDomain() {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<>")
        s.send("RCPT TO:<Postmaster>")
        #expect(s.machine.transaction?.recipients.map(\.mailbox) == [Mailbox(localPart: "postmaster", domain: "example.test")])
    }

    @Test func postmasterWithoutLocalDomain() {
        let routes = RouteTable([RouteTable.Route(domains: ["*"], destination: "maildir:/srv/relay")])
        var s = Session(configuration(routes: routes))
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<>")
        #expect(s.send("RCPT TO:<Postmaster>") == "550 5.1.1")
    }

    @Test(arguments: untrustedRefusals) func trustedClientsMayRelay(_ line: String) {
        var s = Session.inTransaction(trusted: true)
        #expect(s.send(line) == "250 2.1.5")
    }

    @Test func trustedClientsUseTheWildcardRouteForOtherDomains() {
        var s = Session.inTransaction(trusted: true)
        s.send("RCPT TO:<user@other.test>")
        s.send("RCPT TO:<user@[192.0.2.1]>")
        s.send("RCPT TO:<user%other.test@example.test>")
        #expect(s.machine.transaction?.destinations == ["maildir:/srv/mail", "maildir:/srv/relay", "maildir:/srv/relay", "maildir:/srv/mail"])
    }

    @Test func trustedClientsWithoutWildcardRoute() {
        let routes = RouteTable([RouteTable.Route(domains: ["example.test"], destination: "maildir:/srv/mail")])
        var s = Session.inTransaction(configuration(routes: routes), trusted: true)
        #expect(s.send("RCPT TO:<user@other.test>") == "554 5.7.1")
        #expect(s.send("RCPT TO:<user%other.test@example.test>") == "250 2.1.5", "trusted: routing characters allowed")
    }

    // MARK: Limits

    @Test func maxRecipients() {
        var s = Session.inTransaction(configuration(maxRecipients: 2))
        #expect(s.send("RCPT TO:<two@example.test>") == "250 2.1.5")
        #expect(s.send("RCPT TO:<three@example.test>") == "452 4.5.3")
        #expect(s.machine.transaction?.recipients.count == 2)
    }

    @Test func maxErrorsThen421AndClose() {
        var s = Session(configuration(maxErrors: 3))
        _ = s.machine.connected()
        #expect(s.send("FOO") == "500 5.5.2")
        #expect(s.send("MAIL FROM:<sender@client.test>") == "503 5.5.1")
        #expect(s.send("BAR") == "500 5.5.2 | 421 4.7.0 close")
        #expect(s.machine.isClosed)
        #expect(s.send("NOOP") == "none")
    }

    @Test func relayRefusalsCountAsErrors() {
        var s = Session.inTransaction(configuration(maxErrors: 2))
        #expect(s.send("RCPT TO:<a@other.test>") == "554 5.7.1")
        #expect(s.send("RCPT TO:<b@other.test>") == "554 5.7.1 | 421 4.7.0 close")
    }

    @Test func successfulCommandsDoNotCountAsErrors() {
        var s = Session(configuration(maxErrors: 2))
        _ = s.machine.connected()
        #expect(s.send("FOO") == "500 5.5.2")
        for _ in 0..<20 { #expect(s.send("NOOP") == "250 2.0.0") }
        #expect(s.send("FOO") == "500 5.5.2 | 421 4.7.0 close")
    }

    // MARK: DATA

    @Test func dataHappyPath() {
        var s = Session.inTransaction()
        let start = s.sendAction("DATA")
        #expect(describe(start) == "start data 354")
        #expect(s.send("NOOP") == "none", "data is being read: no commands")
        #expect(describe(s.machine.dataFinished(outcome())) == "finish")
        let done = s.machine.messageFinished(.queued(id: "QID1"))
        #expect(describe(done) == "250 2.0.0")
        #expect(replies(done).first?.lines == ["Ok: queued as QID1"])
        #expect(s.machine.transaction == nil)
        #expect(s.send("MAIL FROM:<sender@client.test>") == "250 2.1.0", "a new transaction can start")
    }

    @Test func dataWithPipelinedInputCloses() {
        var s = Session.inTransaction()
        #expect(s.send("DATA", pipelined: true) == "554 5.5.0 close")
        #expect(s.machine.isClosed)
    }

    @Test func dataWithPipelinedInputAllowedWhenConfigured() {
        var s = Session.inTransaction(configuration(disconnectOnPipeliningViolation: false))
        #expect(s.send("DATA", pipelined: true) == "start data 354")
    }

    @Test func dataWithOnlyRefusedRecipients() {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<sender@client.test>")
        s.send("RCPT TO:<user@other.test>")
        #expect(s.send("DATA") == "554 5.5.1")
    }

    @Test(arguments: [
        badFlags(bareCR: true), badFlags(bareLF: true), badFlags(nul: true), badFlags(longLine: true),
        badFlags(bareCR: true, bareLF: true, nul: true, longLine: true),
    ])
    func badDataIsRefused(_ f: MessageDataFlags) {
        var s = Session.inTransaction()
        s.send("DATA")
        #expect(describe(s.machine.dataFinished(outcome(f))) == "550 5.6.0")
        #expect(s.machine.transaction == nil)
        #expect(s.send("NOOP") == "250 2.0.0", "the session goes on")
    }

    @Test func oversizeMessage() {
        var s = Session.inTransaction(configuration(maxMessageBytes: 1000))
        s.send("DATA")
        #expect(describe(s.machine.dataFinished(outcome(size: 1001))) == "552 5.3.4")
        #expect(s.machine.transaction == nil)
    }

    @Test func messageOfExactlyTheLimit() {
        var s = Session.inTransaction(configuration(maxMessageBytes: 1000))
        s.send("DATA")
        #expect(describe(s.machine.dataFinished(outcome(size: 1000))) == "finish")
    }

    @Test func dataStageVerdicts() {
        var s = Session.inTransaction()
        s.send("DATA")
        #expect(describe(s.machine.dataFinished(outcome(verdict: .reject(550, "5.7.1", "Spam")))) == "550 5.7.1")

        s = Session.inTransaction()
        s.send("DATA")
        #expect(describe(s.machine.dataFinished(outcome(verdict: .tempfail(451, "4.7.1", "Later")))) == "451 4.7.1")

        s = Session.inTransaction()
        s.send("DATA")
        #expect(describe(s.machine.dataFinished(outcome(verdict: .disconnect(SMTPReply(421, "4.7.0", "Bye"))))) == "421 4.7.0 close")
    }

    @Test func messageResults() {
        let cases: [(SessionStateMachine.MessageResult, String)] = [
            (.queued(id: "A"), "250 2.0.0"),
            (.quarantined(id: "A"), "250 2.0.0"),
            (.discarded, "250 2.0.0"),
            (.refused(SMTPReply(550, "5.7.1", "No")), "550 5.7.1"),
            (.refused(SMTPReply(421, "4.3.2", "Shutting down")), "421 4.3.2 close"),
            (.disconnect(SMTPReply(421, "4.7.0", "Bye")), "421 4.7.0 close"),
            (.spoolFailed, "451 4.3.0"),
        ]
        for (result, expected) in cases {
            var s = Session.inTransaction()
            s.send("DATA")
            _ = s.machine.dataFinished(outcome())
            #expect(describe(s.machine.messageFinished(result)) == expected, "\(result)")
        }
    }

    // MARK: BDAT (RFC 3030)

    @Test func bdatChunks() {
        var s = Session.inTransaction()
        #expect(s.send("BDAT 10") == "read 10")
        let ack = s.machine.bdatChunkRead(chunkSize: 10, outcome: outcome(size: 10))
        #expect(describe(ack) == "250 2.0.0")
        #expect(replies(ack).first?.lines == ["10 octets received"])
        #expect(s.send("BDAT 5 LAST") == "read 5 last")
        #expect(describe(s.machine.bdatChunkRead(chunkSize: 5, outcome: outcome(size: 15))) == "finish")
        #expect(describe(s.machine.messageFinished(.queued(id: "QID1"))) == "250 2.0.0")
    }

    @Test func dataAfterBDATIsRefused() {
        var s = Session.inTransaction()
        s.send("BDAT 10")
        _ = s.machine.bdatChunkRead(chunkSize: 10, outcome: outcome(size: 10))
        #expect(s.send("DATA") == "503 5.5.1")
    }

    @Test func bdatWithoutTransactionReadsAndDropsTheChunk() {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        #expect(s.send("BDAT 10 LAST") == "read 10 discard last")
        #expect(describe(s.machine.bdatChunkRead(chunkSize: 10, outcome: outcome(size: 10))) == "503 5.5.1")
        s.send("MAIL FROM:<sender@client.test>")
        #expect(s.send("BDAT 3") == "read 3 discard", "no recipients yet")
        #expect(describe(s.machine.bdatChunkRead(chunkSize: 3, outcome: outcome(size: 3))) == "503 5.5.1")
    }

    @Test func bdatLastWithBadData() {
        var s = Session.inTransaction()
        s.send("BDAT 4 LAST")
        #expect(describe(s.machine.bdatChunkRead(chunkSize: 4, outcome: outcome(size: 4, badFlags(bareCR: true)))) == "550 5.6.0")
    }

    @Test func bdatOversize() {
        var s = Session.inTransaction(configuration(maxMessageBytes: 100))
        s.send("BDAT 60")
        _ = s.machine.bdatChunkRead(chunkSize: 60, outcome: outcome(size: 60))
        s.send("BDAT 60 LAST")
        #expect(describe(s.machine.bdatChunkRead(chunkSize: 60, outcome: outcome(size: 120))) == "552 5.3.4")
    }

    @Test func bdatChunkReadOutOfTurnDoesNothing() {
        var s = Session.inTransaction()
        #expect(describe(s.machine.bdatChunkRead(chunkSize: 1, outcome: outcome())) == "none")
    }

    // MARK: Stage verdicts at MAIL and RCPT

    @Test func mailStages() {
        var s = Session(configuration(hooked: [.mailFrom]))
        _ = s.machine.connected()
        s.send("EHLO client.test")
        #expect(s.send("MAIL FROM:<spam@bad.test>") == "run mail")
        #expect(s.machine.transactionInfo?.queueID == "QID1")
        #expect(describe(s.machine.stagesFinished(.reject(550, "5.7.1", "No"))) == "550 5.7.1")
        #expect(s.machine.transaction == nil)
        #expect(s.send("MAIL FROM:<ok@client.test>") == "run mail")
        #expect(describe(s.machine.stagesFinished(.quarantine(reason: "looks odd"))) == "250 2.1.0")
        #expect(s.machine.heldVerdict == .quarantine(reason: "looks odd"))
    }

    @Test func recipientStages() {
        var s = Session(configuration(hooked: [.rcptTo]))
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<sender@client.test>")
        #expect(s.send("RCPT TO:<a@example.test>") == "run rcpt a@example.test -> maildir:/srv/mail")
        #expect(describe(s.machine.stagesFinished(.reject(550, "5.1.1", "No such user"))) == "550 5.1.1")
        #expect(s.send("RCPT TO:<b@example.test>") == "run rcpt b@example.test -> maildir:/srv/mail")
        #expect(describe(s.machine.stagesFinished(.continue)) == "250 2.1.5")
        #expect(s.machine.transaction?.recipients.map(\.mailbox.localPart) == ["b"])
        #expect(describe(s.machine.stagesFinished(.continue)) == "none", "nothing pending")
    }

    @Test func relayIsCheckedBeforeRecipientStages() {
        var s = Session(configuration(hooked: [.rcptTo]))
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<sender@client.test>")
        #expect(s.send("RCPT TO:<user@other.test>") == "554 5.7.1")
    }

    @Test func onlyRefusedRecipientsAfterStages() {
        var s = Session(configuration(hooked: [.rcptTo]))
        _ = s.machine.connected()
        s.send("EHLO client.test")
        s.send("MAIL FROM:<sender@client.test>")
        s.send("RCPT TO:<a@example.test>")
        _ = s.machine.stagesFinished(.reject(550, "5.1.1", "No such user"))
        #expect(s.send("DATA") == "554 5.5.1")
    }
}

@Suite("RouteTable")
struct RouteTableTests {
    let table = RouteTable([
        RouteTable.Route(domains: ["Example.TEST", "second.test"], destination: "maildir:/a"),
        RouteTable.Route(domains: ["second.test", "third.test"], destination: "maildir:/b"),
        RouteTable.Route(domains: ["*"], destination: "maildir:/any"),
        RouteTable.Route(domains: ["*"], destination: "maildir:/later"),
    ])

    func destination(_ local: String, _ domain: String, trusted: Bool = false) -> String {
        switch table.destination(for: Mailbox(localPart: local, domain: domain), trusted: trusted) {
        case .success(let d): d.description
        case .failure(let r): "\(r.code) \(r.enhancedCode?.description ?? "")"
        }
    }

    @Test func domainsAreLowercased() {
        #expect(table.routes[0].domains == ["example.test", "second.test"])
        #expect(destination("user", "EXAMPLE.test") == "maildir:/a")
    }

    @Test func firstRouteWins() {
        #expect(destination("user", "second.test") == "maildir:/a")
        #expect(destination("user", "third.test") == "maildir:/b")
        #expect(destination("user", "elsewhere.test", trusted: true) == "maildir:/any")
    }

    @Test func wildcardOnlyForTrustedClients() {
        #expect(destination("user", "elsewhere.test") == "554 5.7.1")
        #expect(destination("user", "elsewhere.test", trusted: true) == "maildir:/any")
    }

    @Test func primaryDomain() {
        #expect(table.primaryDomain == "example.test")
        #expect(RouteTable([RouteTable.Route(domains: ["*"], destination: "maildir:/x"), RouteTable.Route(domains: ["b.test"], destination: "maildir:/y")]).primaryDomain == "b.test")
        #expect(RouteTable([RouteTable.Route(domains: ["*"], destination: "maildir:/x")]).primaryDomain == nil)
    }

    @Test(arguments: ["user%elsewhere.test", "elsewhere.test!user", "user@elsewhere.test"])
    func routingLocalPartsRefusedUnlessTrusted(_ local: String) {
        #expect(destination(local, "example.test") == "554 5.7.1")
        #expect(destination(local, "example.test", trusted: true) == "maildir:/a")
    }

    @Test func addressLiteralsAreNeverLocalForUntrustedClients() {
        let t = RouteTable([RouteTable.Route(domains: ["[192.0.2.1]"], destination: "maildir:/lit")])
        #expect((try? t.destination(for: Mailbox(localPart: "u", domain: "[192.0.2.1]"), trusted: false).get()) == nil)
        #expect((try? t.destination(for: Mailbox(localPart: "u", domain: "[192.0.2.1]"), trusted: true).get()) == "maildir:/lit")
    }

    @Test func refusalNamesTheAddress() {
        guard case .failure(let reply) = table.destination(for: Mailbox(localPart: "u", domain: "elsewhere.test"), trusted: false) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(reply.lines == ["<u@elsewhere.test>: Relay access denied"])
    }
}
