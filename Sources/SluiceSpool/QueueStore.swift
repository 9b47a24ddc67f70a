import Logging
import NIOCore
import NIOPosix
import SMTPCore
import SluiceMessage

/// The durable queue as the rest of the gateway sees it: the only thing the receiving and the
/// delivering sides share. Sessions write drafts into it and announce what they committed;
/// delivery takes due messages out of it, reads their content and records what became of each
/// recipient; `sluice queue` lists and moves messages. The file spool (`FileQueueStore`) is the
/// first implementation; a store on a database plugs in here without the session, the intake
/// or the transports changing.
public protocol QueueStore: AnyObject, Sendable {
    // MARK: Receiving

    /// False when MAIL should get `452 4.3.1` (free space below `[server] min_free_bytes`).
    func hasFreeSpace() -> Bool
    /// False when MAIL should get `451 4.3.0`: the store cannot take mail now (a database that
    /// is unreachable). A file spool always can.
    var isAvailable: Bool { get }
    /// A new message being received on `eventLoop`; nothing is durable before its `commit`.
    func makeDraft(id: String, eventLoop: any EventLoop) -> any QueueDraft
    /// A message committed (its 250 sent or about to be): due for delivery now.
    func announce(_ id: String)

    // MARK: Delivering

    /// Startup: cleans up what an earlier process left unfinished and makes waiting messages
    /// due. Returns how many were waiting.
    func recover(logger: Logger) async throws -> Int
    /// Ids of messages as they become due (announced, retry time reached, flushed); it ends
    /// after `finish()`.
    var due: AsyncStream<String> { get }
    /// Takes a due message for one delivery attempt; nil when it is no longer in the queue
    /// (delivered, deleted or put on hold meanwhile).
    func claim(_ id: String) async throws -> QueuedMessage?
    /// Where a transport reads the claimed message's content.
    func content(of message: QueuedMessage) -> MessageContent
    /// Ends the attempt with recipients still deferred: records durably the recipients it
    /// resolved (and, with `warned`, that the delay warning went out), so a retry never repeats
    /// them, and makes the message due again after `delay` (or at a flush, or an ETRN for one of
    /// `domains`). A store that can does both in one step.
    func retry(_ message: QueuedMessage, resolved: [(Int, RecipientResolution)], warned: Bool, after delay: Duration, domains: Set<String>) async throws
    /// Ends the message: every recipient is resolved; it leaves the queue.
    func complete(_ message: QueuedMessage) async throws
    /// Queues a message the gateway wrote itself (a bounce or a notice), as durably as a received
    /// one, and makes it due.
    func enqueueGenerated(content: [UInt8], envelope: SpoolEnvelope) async throws
    /// Makes deferred messages due now (all, or one by id, which may also be a message just
    /// released from hold). Returns how many.
    @discardableResult func flush(_ id: String?) async throws -> Int
    /// ETRN (RFC 1985): makes due now the deferred messages with a recipient in `domain`.
    func flush(domain: String) async throws -> Int
    /// No more due messages: `due` ends.
    func finish()
}

/// Operator access to a queue, the same with or without a running gateway (`sluice queue`).
public protocol QueueInspection: Sendable {
    /// Every message the queue holds, in every state, oldest first within a state.
    func list() async throws -> [QueueListing]
    /// One message, in whichever state it is.
    func show(_ id: String) async throws -> QueueListing?
    /// Asks for delivery now: all deferred mail, or one message.
    func requestFlush(_ id: String?) async throws
    /// Keeps a queued message without delivering it.
    func hold(_ id: String) async throws
    /// Puts a held or quarantined message back in the queue and asks for its delivery now.
    func release(_ id: String) async throws
    /// Deletes a message in any state, with its delivery progress.
    func delete(_ id: String) async throws
}

/// A message as `sluice queue list` and `show` print it.
public struct QueueListing: Sendable {
    /// Where a message can be.
    public enum State: String, Sendable, CaseIterable, Codable {
        case queued, held, quarantined
    }

    public var envelope: SpoolEnvelope
    public var state: State
    /// The node holding a delivery claim on it (a cluster's queue only).
    public var claimedBy: String?

    public init(envelope: SpoolEnvelope, state: State, claimedBy: String? = nil) {
        self.envelope = envelope
        self.state = state
        self.claimedBy = claimedBy
    }
}

/// What an earlier attempt decided for one recipient.
public enum RecipientResolution: Sendable, Hashable {
    case delivered
    case failed(SMTPReply)
}

/// A message claimed for one delivery attempt.
public struct QueuedMessage: Sendable {
    public var envelope: SpoolEnvelope
    /// Octets of content as stored (without `prefix`).
    public var contentLength: Int
    /// Recipients resolved by earlier attempts, by index in `envelope.recipients`.
    public var resolved: [Int: RecipientResolution]
    /// The sender has had its delay warning.
    public var warned: Bool
    /// Attempts made before this one (the backoff doubles with each).
    public var attempts: Int

    public init(envelope: SpoolEnvelope, contentLength: Int, resolved: [Int: RecipientResolution] = [:], warned: Bool = false, attempts: Int = 0) {
        self.envelope = envelope
        self.contentLength = contentLength
        self.resolved = resolved
        self.warned = warned
        self.attempts = attempts
    }

    public var id: String { envelope.id }
    /// Header fields that go before the content (`SpoolEnvelope.prepend`).
    public var prefix: [UInt8] { Array((envelope.prepend ?? "").utf8) }
    /// The message's size as delivered: prefix and content.
    public var messageLength: Int { (envelope.prepend?.utf8.count ?? 0) + contentLength }
}

/// How a transport reads a message's content (without the prefix fields).
public enum MessageContent: Sendable {
    /// The first `length` octets of a local file, read directly (blocking calls, on a thread pool).
    case file(path: String, length: Int)
    /// Chunks from anywhere else.
    case chunks(MessageBody, length: Int)

    public var length: Int {
        switch self {
        case .file(_, let length), .chunks(_, let length): length
        }
    }

    /// The content in chunks; a file is read on `threadPool`.
    public func chunks(threadPool: NIOThreadPool) -> MessageBody {
        switch self {
        case .file(let path, let length): SpoolReader.body(path: path, from: 0, length: length, threadPool: threadPool)
        case .chunks(let body, _): body
        }
    }

    /// Up to `limit` octets from the start.
    public func read(upTo limit: Int, threadPool: NIOThreadPool) async throws -> [UInt8] {
        var out: [UInt8] = []
        for try await chunk in chunks(threadPool: threadPool) {
            out += chunk.prefix(limit - out.count)
            if out.count >= limit { break }
        }
        return out
    }
}

/// A message being received, confined to its session's event loop; see `SpoolDraft`.
public protocol QueueDraft: AnyObject {
    var id: String { get }
    /// The first octets of the message (up to `SpoolDraft.headerPrefixLimit`), for the header section.
    var headerPrefix: [UInt8] { get }
    /// Octets appended so far.
    var size: Int { get }
    /// True when enough is pending that the session should `flush()` before reading more.
    var shouldFlush: Bool { get }
    func append(_ chunk: ByteBuffer)
    /// Stores pending content (not yet durably).
    func flush() -> EventLoopFuture<Void>
    /// The body from `offset`, stored only when a stage first reads it; before `commit`, wait for `settled()`.
    func lazyBody(from offset: Int) -> (body: MessageBody, settled: @Sendable () -> EventLoopFuture<Void>)
    /// Makes the message durable; only when the future succeeds may the session answer 250.
    func commit(_ commit: DraftCommit) -> EventLoopFuture<Void>
    /// Drops the message and whatever of it was stored.
    func discard()
}

extension QueueDraft {
    public func append(_ bytes: [UInt8]) {
        var buffer = ByteBufferAllocator().buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        append(buffer)
    }
}
