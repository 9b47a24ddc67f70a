import SMTPCore
import SluiceStageAPI

/// What a session needs to know, fixed at startup from `[server]`, the routes and the chain.
public struct SessionConfiguration: Sendable {
    /// `[server] hostname`: greeting, EHLO, Received.
    public var hostname: String
    /// `[server] max_recipients` (default 100): 452 4.5.3 beyond.
    public var maxRecipients: Int = 100
    /// `[server] max_errors` (default 10): after this many error replies, 421 4.7.0 and close.
    public var maxErrors: Int = 10
    /// The SIZE limit: `[server] max_message_bytes` or a stage's smaller limit.
    public var maxMessageBytes: Int = 52_428_800
    /// `[server] pipelining_violation = "disconnect"` (default): input after DATA before the 354 ends the session.
    public var disconnectOnPipeliningViolation = true
    /// EHLO keywords contributed by stages.
    public var stageKeywords: [String] = []
    /// Phases some stage hooks.
    public var hookedPhases: Set<StagePhase> = []
    public var routes: RouteTable
    public var limits = SMTPLimits()
    /// False when the spool is short of space (`[server] min_free_bytes`): MAIL gets 452 4.3.1.
    public var hasFreeSpace: @Sendable () -> Bool = { true }
    /// False when the queue cannot take mail now (a cluster's database is unreachable): MAIL
    /// gets 451 4.3.0, so nothing is accepted that could not be stored.
    public var queueAvailable: @Sendable () -> Bool = { true }
    /// ETRN (RFC 1985) is offered (`[server] etrn_from` not empty); the session asks the queue
    /// for a run with `requestQueueRun`.
    public var offersETRN = false
    /// `[auth] sender_login`: whether an authenticated user may use a MAIL FROM address.
    public var senderLogin: (@Sendable (String, ReversePath) -> Bool)?
    /// True when a client address has used up `[auth] max_failures`: AUTH then gets 421 at once.
    public var authBlocked: (@Sendable (String) -> Bool)?
    /// Makes the queue id of a new transaction (at MAIL, as Postfix does).
    public var makeQueueID: @Sendable () -> String = { "" }

    public init(hostname: String, routes: RouteTable) {
        self.hostname = hostname
        self.routes = routes
    }
}
