import Logging
import NIOCore
import NIOPosix
import SMTPCore
import Synchronization

/// The queue on the local file system (`[server] spool`), the embedded default: messages in
/// `Spool`'s folders, delivery progress in `state/`, and the retry schedule in memory (on a
/// restart every waiting message is due at once, as with Postfix's `postfix flush`).
public final class FileQueueStore: QueueStore, QueueInspection {
    public let spool: Spool
    public let due: AsyncStream<String>
    private let input: AsyncStream<String>.Continuation
    private let attempts = Mutex<[String: Int]>([:])

    /// A deferred message waiting for its next attempt.
    private struct Retry {
        var task: Task<Void, Never>
        /// Domains of the recipients still deferred (for ETRN).
        var domains: Set<String>
    }
    private let retries = Mutex<[String: Retry]>([:])

    public init(spool: Spool) {
        self.spool = spool
        (due, input) = AsyncStream<String>.makeStream()
    }

    /// A store on the spool at `layout`, its disk calls on `threadPool`.
    public convenience init(layout: SpoolLayout, threadPool: NIOThreadPool, minFreeBytes: UInt64) {
        self.init(spool: Spool(layout: layout, threadPool: threadPool, minFreeBytes: minFreeBytes))
    }

    /// A store for `sluice queue`: inspection and control only, no delivery.
    public static func inspecting(_ layout: SpoolLayout) -> FileQueueStore {
        FileQueueStore(layout: layout, threadPool: .singleton, minFreeBytes: 0)
    }

    private var layout: SpoolLayout { spool.layout }
    private var threadPool: NIOThreadPool { spool.threadPool }

    // MARK: Receiving

    public func hasFreeSpace() -> Bool { spool.hasFreeSpace() }
    public var isAvailable: Bool { true }

    public func makeDraft(id: String, eventLoop: any EventLoop) -> any QueueDraft {
        spool.makeDraft(id: id, eventLoop: eventLoop)
    }

    public func announce(_ id: String) { input.yield(id) }

    // MARK: Delivering

    public func recover(logger: Logger) async throws -> Int {
        let spool = self.spool
        let ids = try await threadPool.runIfActive { try spool.recover(logger: logger) }
        for id in ids { input.yield(id) }
        return ids.count
    }

    public func claim(_ id: String) async throws -> QueuedMessage? {
        let spool = self.spool
        let loaded: (Spool.StoredMessage, [Int: RecipientResolution])
        do {
            loaded = try await threadPool.runIfActive { (try spool.load(id), try DeliveryState.load(spool.layout, id)) }
        } catch SpoolError.notFound {
            attempts.withLock { _ = $0.removeValue(forKey: id) }
            return nil
        }
        var resolved = loaded.1
        let warned = resolved.removeValue(forKey: DeliveryState.warnedKey) != nil
        return QueuedMessage(
            envelope: loaded.0.envelope, contentLength: loaded.0.contentLength, resolved: resolved, warned: warned,
            attempts: attempts.withLock { $0[id, default: 0] }
        )
    }

    public func content(of message: QueuedMessage) -> MessageContent {
        .file(path: layout.queueFile(message.id), length: message.contentLength)
    }

    public func retry(_ message: QueuedMessage, resolved: [(Int, RecipientResolution)], warned: Bool, after delay: Duration, domains: Set<String>) async throws {
        var entries = resolved
        if warned { entries.append((DeliveryState.warnedKey, .delivered)) }
        if !entries.isEmpty {
            let (layout, id, records) = (self.layout, message.id, entries)
            try await threadPool.runIfActive { try DeliveryState.append(layout, id, records) }
        }
        schedule(message, after: delay, domains: domains)
    }

    private func schedule(_ message: QueuedMessage, after delay: Duration, domains: Set<String>) {
        let id = message.id
        attempts.withLock { $0[id] = message.attempts + 1 }
        let task = Task {
            try? await Task.sleep(for: delay)
            guard !Task.isCancelled else { return }
            if self.retries.withLock({ $0.removeValue(forKey: id) }) != nil { self.input.yield(id) }
        }
        retries.withLock { $0[id] = Retry(task: task, domains: domains) }
    }

    public func complete(_ message: QueuedMessage) async throws {
        let (spool, id) = (self.spool, message.id)
        try await threadPool.runIfActive {
            try CrashPoint.reached(.delivered)
            try spool.remove(id)
            try DeliveryState.remove(spool.layout, id)
        }
        attempts.withLock { _ = $0.removeValue(forKey: id) }
    }

    public func enqueueGenerated(content: [UInt8], envelope: SpoolEnvelope) async throws {
        let spool = self.spool
        try await threadPool.runIfActive { try spool.writeGenerated(id: envelope.id, content: content, envelope: envelope) }
        input.yield(envelope.id)
    }

    @discardableResult
    public func flush(_ id: String?) async throws -> Int {
        flushNow(id)
    }

    /// Makes deferred messages due now (all, or the one by id); returns how many.
    @discardableResult
    func flushNow(_ id: String?) -> Int {
        let due: [String] = retries.withLock { r in
            let ids = id.map { r[$0] == nil ? [] : [$0] } ?? Array(r.keys)
            for i in ids { r.removeValue(forKey: i)?.task.cancel() }
            return ids
        }
        for i in due { input.yield(i) }
        if let id, due.isEmpty, FileIO.exists(layout.queueFile(id)) {
            input.yield(id)
            return 1
        }
        return due.count
    }

    public func flush(domain: String) async throws -> Int {
        let wanted = domain.lowercased()
        let due: [String] = retries.withLock { r in
            let ids = r.filter { $0.value.domains.contains(wanted) }.map(\.key)
            for i in ids { r.removeValue(forKey: i)?.task.cancel() }
            return ids
        }
        for i in due { input.yield(i) }
        return due.count
    }

    public func finish() { input.finish() }

    /// Takes the requests `sluice queue` left in `control/` and acts on them (see `QueueControl`).
    public func takeControlRequests() {
        for request in QueueControl.takeRequests(layout) { flushNow(request) }
    }

    // MARK: Inspection

    public func list() async throws -> [QueueListing] {
        let layout = self.layout
        return QueueListing.State.allCases.flatMap { state in
            SpoolFileReader.ids(layout: layout, state: state).compactMap { id in
                (try? SpoolFileReader.load(layout: layout, id: id, state: state)).map { QueueListing(envelope: $0.envelope, state: state) }
            }
        }
    }

    public func show(_ id: String) async throws -> QueueListing? {
        for state in QueueListing.State.allCases {
            if let m = try? SpoolFileReader.load(layout: layout, id: id, state: state) { return QueueListing(envelope: m.envelope, state: state) }
        }
        return nil
    }

    public func requestFlush(_ id: String?) async throws { try QueueControl.requestFlush(layout, id: id) }
    public func hold(_ id: String) async throws { try QueueControl.hold(layout, id: id) }
    public func release(_ id: String) async throws { try QueueControl.release(layout, id: id) }
    public func delete(_ id: String) async throws { try QueueControl.delete(layout, id: id) }
}
