import Foundation

/// The body of the message in progress, written to a temporary file as the MTA sends it, so that
/// end-of-message stages can read it (as often as they like) without it ever being in memory
/// whole. Written from a libmilter thread (blocking writes are fine there); removed at the end
/// of the transaction.
final class MessageBodyFile {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let path: String
    private var fd: Int32
    private(set) var size = 0

    init(directory: String) throws(Failure) {
        var template = Array((directory.hasSuffix("/") ? directory : directory + "/").utf8CString.dropLast())
            + Array("sluice-milter-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw Failure(description: "cannot create a temporary file in \(directory): \(String(cString: strerror(errno)))")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        self.fd = fd
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws(Failure) {
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))")
            }
            offset += n
        }
        size += bytes.count
    }

    /// Done writing; the file stays for reading until `remove()`.
    func finish() {
        if fd >= 0 { close(fd) }
        fd = -1
    }

    func remove() {
        finish()
        unlink(path)
    }

    deinit {
        if fd >= 0 { close(fd) }
    }
}
