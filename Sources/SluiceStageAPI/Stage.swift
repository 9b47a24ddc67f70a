/// A step of the mail pipeline. Implement the phases you need; the chain calls only those in `phases`.
///
/// A stage is created once at startup from its `[[stage]]` table (see `StageFactory`) and then shared
/// by every session, so it must be `Sendable`; keep per-session data in `SessionInfo.state` or
/// `TransactionInfo.state`. Throwing, or running past the stage's `timeout_ms`, applies its
/// `on_error` policy (default: 451 4.3.0).
public protocol Stage: Sendable {
    /// The phases this stage hooks.
    var phases: Set<StagePhase> { get }
    /// What the stage may do to a message; checked against the chain order at startup.
    var capabilities: StageCapabilities { get }
    /// Keywords the stage adds to the EHLO reply (e.g. `SIZE 10485760`).
    var ehloKeywords: [String] { get }
    /// The largest message this stage accepts, in octets; the session enforces it while data streams
    /// (552 5.3.4, nothing spooled) and advertises the smallest such limit in `SIZE`.
    var messageSizeLimit: Int? { get }

    func connect(session: SessionInfo) async throws -> StageVerdict
    func helo(session: SessionInfo) async throws -> StageVerdict
    func mailFrom(session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict
    func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict
    /// The `data` phase, part one: the header section, once it has arrived.
    func headers(_ headers: [HeaderField], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict
    /// The `data` phase, part two: each body chunk as it arrives (CRLF lines, unstuffed).
    func bodyChunk(_ chunk: [UInt8], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict
    func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision
    /// After the 250: the message is in the spool under `queueID`.
    func queued(queueID: String, session: SessionInfo, transaction: TransactionInfo) async
    func disconnect(session: SessionInfo) async
}

extension Stage {
    public var capabilities: StageCapabilities { [] }
    public var ehloKeywords: [String] { [] }
    public var messageSizeLimit: Int? { nil }

    public func connect(session: SessionInfo) async throws -> StageVerdict { .continue }
    public func helo(session: SessionInfo) async throws -> StageVerdict { .continue }
    public func mailFrom(session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict { .continue }
    public func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict { .continue }
    public func headers(_ headers: [HeaderField], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict { .continue }
    public func bodyChunk(_ chunk: [UInt8], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict { .continue }
    public func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision { StageDecision() }
    public func queued(queueID: String, session: SessionInfo, transaction: TransactionInfo) async {}
    public func disconnect(session: SessionInfo) async {}
}
