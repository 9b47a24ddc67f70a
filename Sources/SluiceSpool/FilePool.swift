import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Recycles spool files instead of deleting them. A mail spool creates and deletes a file per
/// message; on ext4 each new inode is then searched for past every inode freed in the last
/// minutes (`recently_deleted`), which under load costs more CPU than the rest of the gateway.
/// Delivered or abandoned files are renamed into `free/` and reused (truncated) for new
/// messages, so steady traffic allocates and frees no inodes. A crash loses nothing: `free/`
/// only ever holds garbage.
final class FilePool: Sendable {
    private let directory: String
    private let capacity: Int
    private let names = Mutex<[String]>([])
    private let counter = Atomic<UInt64>(0)

    init(directory: String, capacity: Int = 4096) {
        self.directory = directory
        self.capacity = capacity
    }

    /// Adopts the files left in `free/` at startup.
    func load() {
        let found = (try? FileIO.list(directory)) ?? []
        names.withLock { $0 = Array(found.prefix(capacity)) }
        for extra in found.dropFirst(capacity) { try? FileIO.unlink(directory + "/" + extra) }
    }

    /// Blocking: opens a new, empty file at `path`, reusing a pooled inode when there is one.
    func create(_ path: String) throws -> Int32 {
        while let name = names.withLock({ $0.popLast() }) {
            guard rename(directory + "/" + name, path) == 0 else { continue }  // gone: try the next
            let fd = open(path, O_RDWR | O_TRUNC | O_CLOEXEC)
            if fd >= 0 { return fd }
        }
        return try FileIO.createExclusive(path)
    }

    /// Blocking: retires the file at `path` into the pool (or deletes it when the pool is full).
    func retire(_ path: String) throws {
        let full = names.withLock { $0.count >= capacity }
        if full {
            try FileIO.unlink(path)
            return
        }
        let name = "f\(getpid())-\(counter.add(1, ordering: .relaxed).newValue)"
        try FileIO.rename(path, directory + "/" + name)
        names.withLock { $0.append(name) }
    }
}
