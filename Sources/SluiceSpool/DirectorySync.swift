import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Makes directory entries durable with group commit: callers that renamed a file into the
/// directory call `sync()`, and one `fsync` of the directory serves every rename that happened
/// before it started. Nobody returns before an fsync that began after their rename has finished.
public final class DirectorySync: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`.
    private let path: String
    private let condition = NSCondition()
    private var requested: UInt64 = 0
    private var completed: UInt64 = 0
    private var syncing = false

    public init(path: String) { self.path = path }

    /// Blocks until a directory fsync that started after this call has completed.
    public func sync() throws {
        condition.lock()
        requested += 1
        let ticket = requested
        while completed < ticket {
            if syncing {
                condition.wait()
                continue
            }
            syncing = true
            let upTo = requested
            condition.unlock()
            let error = Self.fsyncDirectory(path)
            condition.lock()
            syncing = false
            if let error {
                condition.broadcast()
                condition.unlock()
                throw error
            }
            completed = max(completed, upTo)
            condition.broadcast()
        }
        condition.unlock()
    }

    private static func fsyncDirectory(_ path: String) -> FileIOError? {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { return FileIOError(call: "open", path: path, errno: errno) }
        defer { close(fd) }
        if fsync(fd) != 0 { return FileIOError(call: "fsync", path: path, errno: errno) }
        return nil
    }
}
