import NIOCore
import NIOPosix
import SluiceStageAPI
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
final class ChunkReader: @unchecked Sendable {
    // @unchecked: a reader is used by one iterator at a time, awaiting each call before the next.
    private let path: String
    private var position: Int
    private let end: Int?
    private let threadPool: NIOThreadPool
    private var fd: Int32 = -1

    init(path: String, position: Int, end: Int?, threadPool: NIOThreadPool) {
        self.path = path
        self.position = position
        self.end = end
        self.threadPool = threadPool
    }

    deinit { if fd >= 0 { close(fd) } }

    func next() async throws -> [UInt8]? {
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
    /// Ids in `queue/` (or `quarantine/`), oldest first; none when the folder does not exist.
    public static func ids(layout: SpoolLayout, quarantined: Bool) -> [String] {
        ((try? FileIO.list(quarantined ? layout.quarantine : layout.queue)) ?? []).filter(QueueID.isValid).sorted()
    }

    public static func load(layout: SpoolLayout, id: String, quarantined: Bool) throws -> Spool.StoredMessage {
        guard QueueID.isValid(id) else { throw SpoolError.notFound(id) }
        let path = quarantined ? layout.quarantineFile(id) : layout.queueFile(id)
        guard FileIO.exists(path) else { throw SpoolError.notFound(id) }
        let fd = try FileIO.openRead(path)
        defer { close(fd) }
        let (envelope, length) = try SpoolFileFormat.readEnvelope(fd: fd, path: path)
        return Spool.StoredMessage(envelope: envelope, path: path, contentLength: length)
    }
}
