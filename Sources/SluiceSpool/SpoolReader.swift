import NIOCore
import NIOPosix
import SluiceMessage
#if canImport(Glibc)
import Glibc
#endif

/// Reads message content back from spool files, in chunks, off the event loops.
public enum SpoolReader {
    public static let chunkSize = 64 * 1024

    /// A body reader over `path` from `offset`, for `length` octets (or to the end of file).
    public static func body(path: String, from offset: Int, length: Int?, threadPool: NIOThreadPool) -> MessageBody {
        MessageBody {
            let reader = ChunkReader(path: path, position: offset, end: length.map { offset + $0 }, threadPool: threadPool)
            return { try await reader.next() }
        }
    }
}

/// Pulls chunks of a file on the thread pool; owns its descriptor.
package final class ChunkReader: @unchecked Sendable {
    // @unchecked: a reader is used by one iterator at a time, awaiting each call before the next.
    private let path: String
    private var position: Int
    private let end: Int?
    private let threadPool: NIOThreadPool
    private var fd: Int32 = -1

    package init(path: String, position: Int, end: Int?, threadPool: NIOThreadPool) {
        self.path = path
        self.position = position
        self.end = end
        self.threadPool = threadPool
    }

    deinit { if fd >= 0 { close(fd) } }

    package func next() async throws -> [UInt8]? {
        let want = end.map { min(SpoolReader.chunkSize, $0 - self.position) } ?? SpoolReader.chunkSize
        guard want > 0 else { return nil }
        let (fd, path, position) = (self.fd, self.path, self.position)
        let (newFD, chunk) = try await threadPool.runIfActive { () throws -> (Int32, [UInt8]) in
            let f = fd >= 0 ? fd : try FileIO.openRead(path)
            return (f, try FileIO.pread(f, count: want, offset: position, path: path))
        }
        self.fd = newFD
        if chunk.isEmpty { return nil }
        self.position += chunk.count
        return chunk
    }
}

/// Reads queue files' envelopes (blocking; also used by the `queue` commands without a running gateway).
public enum SpoolFileReader {
    /// Where a message can be.
    public typealias States = QueueListing.State

    /// Ids in one state, oldest first; none when the folder does not exist.
    public static func ids(layout: SpoolLayout, state: States) -> [String] {
        ((try? FileIO.list(state.directory(layout))) ?? []).filter(QueueID.isValid).sorted()
    }

    public static func ids(layout: SpoolLayout, quarantined: Bool) -> [String] {
        ids(layout: layout, state: quarantined ? .quarantined : .queued)
    }

    public static func load(layout: SpoolLayout, id: String, state: States) throws -> Spool.StoredMessage {
        guard QueueID.isValid(id) else { throw SpoolError.notFound(id) }
        let path = state.directory(layout) + "/" + id
        guard FileIO.exists(path) else { throw SpoolError.notFound(id) }
        let fd = try FileIO.openRead(path)
        defer { close(fd) }
        let (envelope, length) = try SpoolFileFormat.readEnvelope(fd: fd, path: path)
        return Spool.StoredMessage(envelope: envelope, path: path, contentLength: length)
    }

    public static func load(layout: SpoolLayout, id: String, quarantined: Bool) throws -> Spool.StoredMessage {
        try load(layout: layout, id: id, state: quarantined ? .quarantined : .queued)
    }
}

extension QueueListing.State {
    func directory(_ layout: SpoolLayout) -> String {
        switch self {
        case .queued: layout.queue
        case .held: layout.hold
        case .quarantined: layout.quarantine
        }
    }
}
