import NIOCore
import NIOPosix
import Synchronization
import SluiceMessage
#if canImport(Glibc)
import Glibc
#endif

/// A message being received, confined to its session's event loop. Content collects in memory
/// and spills to `tmp/<id>` in the background once it passes `spillThreshold`, so a large
/// message never sits whole in memory. Disk calls run on the spool's thread pool; the session
/// waits for each returned future before touching the draft again.
public final class SpoolDraft: QueueDraft {
    public let id: String
    let spool: Spool
    let eventLoop: any EventLoop
    private var pending: ByteBuffer
    private var fd: Int32 = -1
    private var written = 0
    /// Set by `discard()`: work still in flight cleans up after itself, and no commit may follow.
    private var discarded = false
    /// A background write holds the descriptor.
    private var inFlight = false
    /// The first octets of the message, kept to parse the header section.
    public private(set) var headerPrefix: [UInt8] = []
    /// Octets appended so far.
    public private(set) var size = 0

    /// Pending octets that trigger a background write.
    public static let spillThreshold = 256 * 1024
    /// Octets of the message start kept in memory for the header section.
    public static let headerPrefixLimit = 256 * 1024

    var tmpPath: String { spool.layout.tmpFile(id) }

    init(spool: Spool, id: String, eventLoop: any EventLoop) {
        self.spool = spool
        self.id = id
        self.eventLoop = eventLoop
        self.pending = ByteBufferAllocator().buffer(capacity: 8192)
    }

    public func append(_ chunk: ByteBuffer) {
        if headerPrefix.count < Self.headerPrefixLimit {
            let take = min(chunk.readableBytes, Self.headerPrefixLimit - headerPrefix.count)
            headerPrefix += chunk.getBytes(at: chunk.readerIndex, length: take) ?? []
        }
        size += chunk.readableBytes
        var chunk = chunk
        pending.writeBuffer(&chunk)
    }

    /// True when enough is pending that the session should `flush()` before reading more.
    public var shouldFlush: Bool { pending.readableBytes >= Self.spillThreshold }

    /// Writes pending content to `tmp/<id>`.
    public func flush() -> EventLoopFuture<Void> {
        if discarded { return eventLoop.makeFailedFuture(SpoolDraftDiscarded()) }
        let buffer = pending
        pending = ByteBufferAllocator().buffer(capacity: 8192)
        let fd = self.fd
        let path = tmpPath
        let files = spool.files
        inFlight = true
        return spool.threadPool.runIfActive(eventLoop: eventLoop) { () throws -> Int32 in
            let out = fd >= 0 ? fd : try files.create(path)
            do {
                try buffer.withUnsafeReadableBytes { try FileIO.writeAll(out, $0, path: path) }
            } catch {
                if fd < 0 { close(out) }
                throw error
            }
            return out
        }.flatMapResultOnLoop { result -> Result<Void, any Error> in
            self.inFlight = false
            switch result {
            case .success(let out):
                self.fd = out
                self.written += buffer.readableBytes
                if self.discarded {
                    // The session ended while this write ran: the write's owner cleans up.
                    self.releaseFile()
                    return .failure(SpoolDraftDiscarded())
                }
                return .success(())
            case .failure(let error):
                if self.discarded { self.releaseFile() }
                return .failure(error)
            }
        }
    }

    /// Closes and removes the temp file in the background.
    private func releaseFile() {
        let fd = self.fd
        self.fd = -1
        let path = tmpPath
        let files = spool.files
        spool.threadPool.submit { _ in
            if fd >= 0 { close(fd) }
            try? files.retire(path)
        }
    }

    /// The body (from `offset` in the message) for end-of-message stages; call after `flush()`.
    public func body(from offset: Int) -> MessageBody {
        SpoolReader.body(path: tmpPath, from: offset, length: nil, threadPool: spool.threadPool)
    }

    /// The body (from `offset`) for end-of-message stages, flushed to the temp file only when a
    /// stage first reads it: stages that never read the body (DKIM verifies as data streams,
    /// DMARC reads headers) cost no disk round trip. Before `commit`, wait for `settled()`, so
    /// no write a reader started is still in flight.
    public func lazyBody(from offset: Int) -> (body: MessageBody, settled: @Sendable () -> EventLoopFuture<Void>) {
        let gate = FlushGate(draft: NIOLoopBound(self, eventLoop: eventLoop))
        let file = body(from: offset)
        let body = MessageBody {
            var reader: MessageBody.AsyncIterator?
            return {
                if reader == nil {
                    try await gate.flushed().get()
                    reader = file.makeAsyncIterator()
                }
                return try await reader!.next()
            }
        }
        return (body, { gate.settled() })
    }

    public typealias Commit = DraftCommit

    /// Makes the message durable: content, envelope and trailer are written and fsync'd, the file
    /// is renamed into `queue/` (or `quarantine/`) and that directory is fsync'd. Only when the
    /// future succeeds may the session answer 250. On failure the temp file is gone.
    public func commit(_ commit: DraftCommit) -> EventLoopFuture<Void> {
        if discarded { return eventLoop.makeFailedFuture(SpoolDraftDiscarded()) }
        discarded = true  // from here on the commit owns the file; a later discard() is a no-op
        let buffer = pending
        pending = ByteBufferAllocator().buffer(capacity: 0)
        let fd = self.fd
        self.fd = -1
        let path = tmpPath
        let spool = self.spool
        let layout = spool.layout
        return spool.threadPool.runIfActive(eventLoop: eventLoop) {
            var out: Int32 = -1
            var outPath = path
            var renamedTo: String?
            do {
                (out, outPath) = try Self.finishContent(fd: fd, path: path, pending: buffer, commit: commit, files: spool.files)
                var envelope = commit.envelope
                if !commit.prepend.isEmpty {
                    envelope.prepend = String(decoding: HeaderSection.encodeFields(commit.prepend), as: UTF8.self)
                }
                let offset = try FileIO.fileSize(out, path: outPath)
                envelope.size = offset
                try FileIO.writeAll(out, try SpoolFileFormat.encodeEnvelope(envelope) + SpoolFileFormat.trailer(envelopeOffset: offset), path: outPath)
                try CrashPoint.reached(.spoolWritten)
                try FileIO.sync(out, path: outPath)
                try CrashPoint.reached(.spoolSynced)
                close(out)
                out = -1
                let target = commit.quarantine ? layout.quarantineFile(envelope.id) : layout.queueFile(envelope.id)
                try FileIO.rename(outPath, target)
                renamedTo = target
                try CrashPoint.reached(.spoolRenamed)
                try (commit.quarantine ? spool.quarantineSync : spool.queueSync).sync()
                try CrashPoint.reached(.spoolCommitted)
            } catch {
                // The client will hear 451: take back whatever this commit left, even in queue/.
                if out >= 0 { close(out) }
                try? FileIO.unlink(outPath)
                try? FileIO.unlink(path)
                if let renamedTo { try? FileIO.unlink(renamedTo) }
                throw error
            }
        }
    }

    /// Ends the draft for a store that keeps content elsewhere (a database): the commit's edits
    /// are applied as `commit` applies them, and the content comes back with the envelope as
    /// stored (its `prepend` and `size` set). Nothing is made durable here. A content file is
    /// the taker's to remove.
    public func take(_ commit: DraftCommit) -> EventLoopFuture<(content: DraftContent, envelope: SpoolEnvelope)> {
        if discarded { return eventLoop.makeFailedFuture(SpoolDraftDiscarded()) }
        discarded = true
        let buffer = pending
        pending = ByteBufferAllocator().buffer(capacity: 0)
        let fd = self.fd
        self.fd = -1
        var envelope = commit.envelope
        if !commit.prepend.isEmpty {
            envelope.prepend = String(decoding: HeaderSection.encodeFields(commit.prepend), as: UTF8.self)
        }
        if fd < 0, commit.headers == nil, commit.replacementBody == nil {
            // It never left memory, and nothing rewrites it.
            envelope.size = buffer.readableBytes
            return eventLoop.makeSucceededFuture((.memory(buffer), envelope))
        }
        let (path, files) = (tmpPath, spool.files)
        return spool.threadPool.runIfActive(eventLoop: eventLoop) { [envelope] in
            var envelope = envelope
            let (out, outPath) = try Self.finishContent(fd: fd, path: path, pending: buffer, commit: commit, files: files)
            defer { close(out) }
            do {
                envelope.size = try FileIO.fileSize(out, path: outPath)
            } catch {
                try? FileIO.unlink(outPath)
                throw error
            }
            return (.file(path: outPath, length: envelope.size), envelope)
        }
    }

    /// Writes `pending` after what `fd` holds (creating the file at `path` when `fd` is -1), then
    /// applies the commit's edits (an edited header section, a replacement body) into a new file.
    /// Returns the descriptor and path of the finished content; on failure both are closed.
    private static func finishContent(
        fd: Int32, path: String, pending: ByteBuffer, commit: DraftCommit, files: FilePool
    ) throws -> (fd: Int32, path: String) {
        let out = fd >= 0 ? fd : try files.create(path)
        do {
            try pending.withUnsafeReadableBytes { try FileIO.writeAll(out, $0, path: path) }
            guard commit.headers != nil || commit.replacementBody != nil else { return (out, path) }
            // Rewrite: edited header section, then the original or the replacement body.
            let rewritten = path + ".edited"
            let newFD = try FileIO.createExclusive(rewritten)
            do {
                let headers = try commit.headers ?? originalHeaders(fd: out, path: path, bodyOffset: commit.bodyOffset)
                try writeRewritten(
                    to: newFD, path: rewritten, headers: headers, originalFD: out, originalPath: path,
                    bodyOffset: commit.bodyOffset, replacement: commit.replacementBody
                )
            } catch {
                close(newFD)
                try? FileIO.unlink(rewritten)
                throw error
            }
            close(out)
            try? FileIO.unlink(path)
            if let r = commit.replacementBody { try? FileIO.unlink(r) }
            return (newFD, rewritten)
        } catch {
            close(out)
            throw error
        }
    }

    private static func originalHeaders(fd: Int32, path: String, bodyOffset: Int) throws -> [HeaderField] {
        let bytes = try FileIO.pread(fd, count: bodyOffset, offset: 0, path: path)
        return HeaderSection.parse(bytes, atEnd: true).fields
    }

    /// Writes headers + empty line + body.
    private static func writeRewritten(
        to fd: Int32, path: String, headers: [HeaderField], originalFD: Int32, originalPath: String,
        bodyOffset: Int, replacement: String?
    ) throws {
        let head = HeaderSection.encode(headers)
        try FileIO.writeAll(fd, head, path: path)
        let (source, sourcePath, start) = try replacement.map { (try FileIO.openRead($0), $0, 0) } ?? (originalFD, originalPath, bodyOffset)
        defer { if replacement != nil { close(source) } }
        var position = start
        while true {
            let chunk = try FileIO.pread(source, count: 65536, offset: position, path: sourcePath)
            if chunk.isEmpty { break }
            try FileIO.writeAll(fd, chunk, path: path)
            position += chunk.count
        }
    }

    /// Drops the message: closes and removes the temp file (after any write still in flight).
    public func discard() {
        if discarded { return }
        discarded = true
        pending.clear()
        if !inFlight { releaseFile() }
    }
}

/// The draft was discarded (the session ended or the message was refused) before this step.
struct SpoolDraftDiscarded: Error {}

extension EventLoopFuture {
    /// Maps success and failure alike, on the future's event loop.
    func flatMapResultOnLoop<U: Sendable>(_ body: @escaping (Result<Value, any Error>) -> Result<U, any Error>) -> EventLoopFuture<U> {
        let promise = eventLoop.makePromise(of: U.self)
        let loopBound = NIOLoopBound(body, eventLoop: eventLoop)
        whenComplete { promise.completeWith(loopBound.value($0)) }
        return promise.futureResult
    }
}

/// Starts a draft's flush once, from whichever thread reads the body first.
private final class FlushGate: Sendable {
    let draft: NIOLoopBound<SpoolDraft>
    private let started = Mutex<EventLoopFuture<Void>?>(nil)

    init(draft: NIOLoopBound<SpoolDraft>) { self.draft = draft }

    func flushed() -> EventLoopFuture<Void> {
        started.withLock { future in
            if let future { return future }
            let draft = self.draft
            let flush = draft.eventLoop.flatSubmit { draft.value.flush() }
            future = flush
            return flush
        }
    }

    /// The flush a reader started, or a completed future.
    func settled() -> EventLoopFuture<Void> {
        started.withLock { $0 } ?? draft.eventLoop.makeSucceededVoidFuture()
    }
}

/// What a draft's `commit` writes.
public struct DraftCommit: Sendable {
    public var envelope: SpoolEnvelope
    /// The edited header section, when stages changed it.
    public var headers: [HeaderField]?
    /// Where the received body starts in the content (used when rewriting).
    public var bodyOffset: Int
    /// A stage's replacement body.
    public var replacementBody: String?
    /// Put the message in `quarantine/` instead of `queue/`.
    public var quarantine: Bool
    /// Fields to put before the content, when that is all the header edits did: they go
    /// into the envelope and the content is not rewritten.
    public var prepend: [HeaderField] = []

    public init(envelope: SpoolEnvelope, headers: [HeaderField]?, bodyOffset: Int, replacementBody: String?, quarantine: Bool) {
        self.envelope = envelope
        self.headers = headers
        self.bodyOffset = bodyOffset
        self.replacementBody = replacementBody
        self.quarantine = quarantine
    }
}

/// A draft's finished content, as `SpoolDraft.take` gives it to a store that keeps content
/// elsewhere.
public enum DraftContent: Sendable {
    /// It never left memory.
    case memory(ByteBuffer)
    /// A local file of `length` octets, the taker's to remove.
    case file(path: String, length: Int)
}
