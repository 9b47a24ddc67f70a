import Logging
import NIOCore
import NIOPosix
import SluiceMessage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The durable queue on disk, the one thing the receiving and the delivering sides share.
///
/// Writing: a session fills a `SpoolDraft` in `tmp/`; `commit` writes the envelope, fsyncs the
/// file, renames it into `queue/` and fsyncs the directory (group commit) before the 250.
public final class Spool: Sendable {
    public let layout: SpoolLayout
    /// The pool that runs every blocking disk call of the spool.
    public let threadPool: NIOThreadPool
    let queueSync: DirectorySync
    let quarantineSync: DirectorySync
    let files: FilePool
    /// Below this many free bytes MAIL gets 452 4.3.1 (`[server] min_free_bytes`).
    public let minFreeBytes: UInt64
    private let freeSpace = Mutex<(checkedAt: UInt64, free: UInt64)>((0, UInt64.max))

    public init(layout: SpoolLayout, threadPool: NIOThreadPool, minFreeBytes: UInt64) {
        self.layout = layout
        self.threadPool = threadPool
        self.minFreeBytes = minFreeBytes
        self.queueSync = DirectorySync(path: layout.queue)
        self.quarantineSync = DirectorySync(path: layout.quarantine)
        self.files = FilePool(directory: layout.free)
    }

    /// True when the spool's file system has at least `minFreeBytes` free (checked at most once a second).
    public func hasFreeSpace() -> Bool {
        let now = UInt64(NIODeadline.now().uptimeNanoseconds)
        let free = freeSpace.withLock { state -> UInt64 in
            if now &- state.checkedAt > 1_000_000_000 || state.checkedAt == 0 {
                state = (now, FileIO.freeBytes(layout.root) ?? UInt64.max)
            }
            return state.free
        }
        return free >= minFreeBytes
    }

    public func makeDraft(id: String, eventLoop: any EventLoop) -> SpoolDraft {
        SpoolDraft(spool: self, id: id, eventLoop: eventLoop)
    }

    /// Startup recovery: retires unfinished files from `tmp/` (they were never acknowledged),
    /// moves unreadable queue files to `corrupt/`, and returns the ids waiting in `queue/`.
    public func recover(logger: Logger) throws -> [String] {
        try layout.create()
        files.load()
        for name in try FileIO.list(layout.tmp) {
            try files.retire(layout.tmp + "/" + name)
            logger.info("removed unfinished spool file", metadata: ["file": "\(name)"])
        }
        var ids: [String] = []
        for name in try FileIO.list(layout.queue).sorted() {
            do {
                _ = try load(name)
                ids.append(name)
            } catch {
                logger.error("moving unreadable queue file aside", metadata: ["file": "\(name)", "error": "\(error)"])
                try FileIO.rename(layout.queueFile(name), layout.corrupt + "/" + name)
            }
        }
        return ids
    }

    /// A queued message as stored.
    public struct StoredMessage: Sendable {
        public var envelope: SpoolEnvelope
        public var path: String
        /// Octets of message content at the start of the file.
        public var contentLength: Int
    }

    /// Reads the envelope of a message in `queue/` (or `quarantine/`).
    public func load(_ id: String, quarantined: Bool = false) throws -> StoredMessage {
        try SpoolFileReader.load(layout: layout, id: id, quarantined: quarantined)
    }

    /// Ids in `queue/` (or `quarantine/`), oldest first.
    public func list(quarantined: Bool = false) -> [String] {
        SpoolFileReader.ids(layout: layout, quarantined: quarantined)
    }

    /// Blocking: queues a message the gateway wrote itself (a bounce), as durably as a received one.
    func writeGenerated(id: String, content: [UInt8], envelope: SpoolEnvelope) throws {
        let tmp = layout.tmpFile(id)
        let fd = try files.create(tmp)
        do {
            try FileIO.writeAll(fd, content, path: tmp)
            var envelope = envelope
            envelope.size = content.count
            try FileIO.writeAll(fd, try SpoolFileFormat.encodeEnvelope(envelope) + SpoolFileFormat.trailer(envelopeOffset: content.count), path: tmp)
            try FileIO.sync(fd, path: tmp)
            close(fd)
            try FileIO.rename(tmp, layout.queueFile(id))
        } catch {
            close(fd)
            try? FileIO.unlink(tmp)
            throw error
        }
        try queueSync.sync()
    }

    /// Removes a delivered message from the queue.
    public func remove(_ id: String) throws {
        try files.retire(layout.queueFile(id))
    }
}
