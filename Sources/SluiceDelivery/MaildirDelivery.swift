import NIOPosix
import SMTPCore
import SluiceSpool
import SluiceMessage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Delivers a spooled message into a maildir: `<root>/<domain>/<local>/{tmp,new,cur}`.
///
/// The file is written in `tmp/`, fsync'd, renamed into `new/`, and `new/` is fsync'd (group
/// commit, shared with concurrent deliveries) before delivery counts as done. `Return-Path` and
/// `Delivered-To` come first; line ends become LF, as Postfix and Dovecot keep maildir files.
public final class MaildirDelivery: Sendable {
    private let hostname: String
    private let created = Mutex<Set<String>>([])
    private let syncs = Mutex<[String: DirectorySync]>([:])
    private let counter = Atomic<UInt64>(0)

    public init(hostname: String) {
        self.hostname = hostname.replacingSlashes()
    }

    /// The folder for a recipient: domain and local part lowercased, unsafe octets %-escaped.
    public static func folder(root: String, recipient: Mailbox) -> String {
        "\(root)/\(safeName(recipient.normalizedDomain))/\(safeName(recipient.localPart.lowercased()))"
    }

    static func safeName(_ s: String) -> String {
        var out: [UInt8] = []
        for (i, b) in s.utf8.enumerated() {
            let ok = (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
                || b == UInt8(ascii: "+") || b == UInt8(ascii: "=") || (b == UInt8(ascii: ".") && i > 0) || b >= 0x80
            if ok { out.append(b) } else { out += Array(("%" + String(b, radix: 16, uppercase: true)).utf8) }
        }
        return out.isEmpty ? "%" : String(decoding: out, as: UTF8.self)
    }

    /// Delivers a queued message's content to `recipient`, its blocking calls on `threadPool`.
    /// Returns the path of the new maildir file.
    /// - Parameter prefix: header fields that go before the content (CRLF lines).
    @discardableResult
    public func deliver(
        _ content: MessageContent, prefix: [UInt8] = [], sender: ReversePath, recipient: Mailbox, root: String, threadPool: NIOThreadPool
    ) async throws -> String {
        switch content {
        case .file(let path, let length):
            return try await threadPool.runIfActive {
                try self.deliver(spoolPath: path, contentLength: length, prefix: prefix, sender: sender, recipient: recipient, root: root)
            }
        case .chunks(let body, _):
            let file = try await threadPool.runIfActive { try self.start(prefix: prefix, sender: sender, recipient: recipient, root: root) }
            do {
                var converter = LineFeedConverter()
                for try await chunk in body {
                    let converted = converter.convert(chunk)
                    try await threadPool.runIfActive { try FileIO.writeAll(file.fd, converted, path: file.tmp) }
                }
                let rest = converter.finish()
                return try await threadPool.runIfActive {
                    try FileIO.writeAll(file.fd, rest, path: file.tmp)
                    return try self.finish(file)
                }
            } catch {
                close(file.fd)
                try? FileIO.unlink(file.tmp)
                throw error
            }
        }
    }

    /// A maildir file being written in `tmp/`.
    struct OpenFile: Sendable {
        var fd: Int32
        var folder: String
        var name: String
        var tmp: String { folder + "/tmp/" + name }
    }

    /// Blocking: creates the file in `tmp/` with `Return-Path`, `Delivered-To` and the prefix fields.
    func start(prefix: [UInt8], sender: ReversePath, recipient: Mailbox, root: String) throws -> OpenFile {
        let folder = Self.folder(root: root, recipient: recipient)
        try ensureFolders(folder)
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let n = counter.add(1, ordering: .relaxed).newValue
        let file = OpenFile(fd: -1, folder: folder, name: "\(ts.tv_sec).M\(ts.tv_nsec / 1000)P\(getpid())Q\(n).\(hostname)")
        var open = file
        open.fd = try FileIO.createExclusive(file.tmp)
        do {
            var head = "Return-Path: \(sender)\nDelivered-To: \(recipient)\n"
            head.makeContiguousUTF8()
            try FileIO.writeAll(open.fd, Array(head.utf8), path: file.tmp)
            if !prefix.isEmpty { try FileIO.writeAll(open.fd, Self.lineFeedsOnly(prefix), path: file.tmp) }
        } catch {
            close(open.fd)
            try? FileIO.unlink(file.tmp)
            throw error
        }
        return open
    }

    /// Blocking: fsyncs the file, renames it into `new/` and fsyncs `new/` (group commit).
    func finish(_ file: OpenFile) throws -> String {
        do {
            try FileIO.sync(file.fd, path: file.tmp)
        } catch {
            close(file.fd)
            try? FileIO.unlink(file.tmp)
            throw error
        }
        close(file.fd)
        let final = file.folder + "/new/" + file.name
        try FileIO.rename(file.tmp, final)
        try CrashPoint.reached(.maildirRenamed)
        try sync(for: file.folder + "/new").sync()
        return final
    }

    /// Blocking: delivers `contentLength` octets of the queue file at `path` to `recipient`.
    /// Returns the path of the new maildir file.
    /// - Parameter prefix: header fields that go before the content (CRLF lines).
    public func deliver(
        spoolPath: String, contentLength: Int, prefix: [UInt8] = [], sender: ReversePath, recipient: Mailbox, root: String
    ) throws -> String {
        let file = try start(prefix: prefix, sender: sender, recipient: recipient, root: root)
        do {
            let input = try FileIO.openRead(spoolPath)
            defer { close(input) }
            var converter = LineFeedConverter()
            var position = 0
            while position < contentLength {
                let chunk = try FileIO.pread(input, count: min(65536, contentLength - position), offset: position, path: spoolPath)
                if chunk.isEmpty { break }
                position += chunk.count
                try FileIO.writeAll(file.fd, converter.convert(chunk), path: file.tmp)
            }
            try FileIO.writeAll(file.fd, converter.finish(), path: file.tmp)
        } catch {
            close(file.fd)
            try? FileIO.unlink(file.tmp)
            throw error
        }
        return try finish(file)
    }

    /// Whole CRLF lines with LF line ends.
    static func lineFeedsOnly(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == 0x0D && i + 1 < bytes.count && bytes[i + 1] == 0x0A { i += 1; continue }
            out.append(bytes[i])
            i += 1
        }
        return out
    }

    private func ensureFolders(_ folder: String) throws {
        if created.withLock({ $0.contains(folder) }) && FileIO.exists(folder + "/new") { return }
        for sub in ["tmp", "new", "cur"] { try FileIO.makeDirectories(folder + "/" + sub) }
        created.withLock { _ = $0.insert(folder) }
    }

    private func sync(for dir: String) -> DirectorySync {
        syncs.withLock { map in
            if let s = map[dir] { return s }
            let s = DirectorySync(path: dir)
            map[dir] = s
            return s
        }
    }
}

extension String {
    func replacingSlashes() -> String {
        String(decoding: self.utf8.map { $0 == UInt8(ascii: "/") ? UInt8(ascii: "_") : $0 }, as: UTF8.self)
    }
}

/// CRLF to LF across chunk boundaries; a lone CR stays.
struct LineFeedConverter {
    /// A CR ended the previous chunk.
    private var carry = false

    mutating func convert(_ chunk: [UInt8]) -> [UInt8] {
        var converted: [UInt8] = []
        guard !chunk.isEmpty else { return converted }
        converted.reserveCapacity(chunk.count + 1)
        var i = 0
        if carry {
            if chunk[0] != 0x0A { converted.append(0x0D) }
            carry = false
        }
        while i < chunk.count {
            let b = chunk[i]
            if b == 0x0D {
                if i + 1 == chunk.count { carry = true; i += 1; continue }
                if chunk[i + 1] == 0x0A { i += 1; continue }
            }
            converted.append(b)
            i += 1
        }
        return converted
    }

    mutating func finish() -> [UInt8] {
        defer { carry = false }
        return carry ? [0x0D] : []
    }
}
