#if canImport(Glibc)
import Glibc
#endif

/// A failed system call, with errno text.
public struct FileIOError: Error, CustomStringConvertible, Sendable {
    public var call: String
    public var path: String
    public var errno: Int32

    public var description: String { "\(call)(\(path)): \(String(cString: strerror(errno)))" }
}

/// Thin blocking wrappers over POSIX file calls. Callers run them on a thread pool, never on an event loop.
package enum FileIO {
    package static func check(_ result: Int32, _ call: String, _ path: String) throws {
        if result < 0 { throw FileIOError(call: call, path: path, errno: Glibc.errno) }
    }

    package static func createExclusive(_ path: String) throws -> Int32 {
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        try check(fd, "open", path)
        return fd
    }

    package static func openRead(_ path: String) throws -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        try check(fd, "open", path)
        return fd
    }

    package static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw FileIOError(call: "write", path: path, errno: Glibc.errno)
            }
            offset += n
        }
    }

    package static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        try bytes.withUnsafeBytes { (b: UnsafeRawBufferPointer) throws in try writeAll(fd, b, path: path) }
    }

    /// Reads up to `count` bytes at `offset`; fewer only at end of file.
    package static func pread(_ fd: Int32, count: Int, offset: Int, path: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + got, count - got, off_t(offset + got)) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw FileIOError(call: "pread", path: path, errno: Glibc.errno)
            }
            if n == 0 { break }
            got += n
        }
        out.removeSubrange(got...)
        return out
    }

    package static func sync(_ fd: Int32, path: String) throws {
        try check(fdatasync(fd), "fdatasync", path)
    }

    package static func fileSize(_ fd: Int32, path: String) throws -> Int {
        var st = stat()
        try check(fstat(fd, &st), "fstat", path)
        return Int(st.st_size)
    }

    package static func rename(_ from: String, _ to: String) throws {
        try check(Glibc.rename(from, to), "rename", from)
    }

    package static func unlink(_ path: String) throws {
        try check(Glibc.unlink(path), "unlink", path)
    }

    package static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    package static func makeDirectories(_ path: String) throws {
        var st = stat()
        if stat(path, &st) == 0 { return }
        var prefix = ""
        for part in path.split(separator: "/", omittingEmptySubsequences: false) {
            prefix += prefix.isEmpty && path.hasPrefix("/") && part.isEmpty ? "/" : (prefix.isEmpty || prefix == "/" ? "" : "/") + part
            if prefix.isEmpty || prefix == "/" { continue }
            if mkdir(prefix, 0o700) != 0 && Glibc.errno != EEXIST {
                throw FileIOError(call: "mkdir", path: prefix, errno: Glibc.errno)
            }
        }
    }

    /// Names in a directory, without `.` and `..`.
    package static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw FileIOError(call: "opendir", path: path, errno: Glibc.errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Free bytes for unprivileged users on the file system holding `path`.
    package static func freeBytes(_ path: String) -> UInt64? {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return nil }
        return UInt64(st.f_bavail) * UInt64(st.f_frsize)
    }
}
