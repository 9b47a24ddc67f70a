import SMTPCore
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

    /// Blocking: delivers `contentLength` octets of the queue file at `path` to `recipient`.
    /// Returns the path of the new maildir file.
    /// - Parameter prefix: header fields that go before the content (CRLF lines).
    public func deliver(
        spoolPath: String, contentLength: Int, prefix: [UInt8] = [], sender: ReversePath, recipient: Mailbox, root: String
    ) throws -> String {
        let folder = Self.folder(root: root, recipient: recipient)
        try ensureFolders(folder)
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let n = counter.add(1, ordering: .relaxed).newValue
        let name = "\(ts.tv_sec).M\(ts.tv_nsec / 1000)P\(getpid())Q\(n).\(hostname)"
        let tmp = folder + "/tmp/" + name
        let out = try FileIO.createExclusive(tmp)
        do {
            let input = try FileIO.openRead(spoolPath)
            defer { close(input) }
            var head = "Return-Path: \(sender)\nDelivered-To: \(recipient)\n"
            head.makeContiguousUTF8()
            try FileIO.writeAll(out, Array(head.utf8), path: tmp)
            if !prefix.isEmpty { try FileIO.writeAll(out, Self.lineFeedsOnly(prefix), path: tmp) }
            var position = 0
            var carry = false  // a CR ended the previous chunk
            while position < contentLength {
                let chunk = try FileIO.pread(input, count: min(65536, contentLength - position), offset: position, path: spoolPath)
                if chunk.isEmpty { break }
                position += chunk.count
                var converted: [UInt8] = []
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
                try FileIO.writeAll(out, converted, path: tmp)
            }
            if carry { try FileIO.writeAll(out, [0x0D], path: tmp) }
            try FileIO.sync(out, path: tmp)
        } catch {
            close(out)
            try? FileIO.unlink(tmp)
            throw error
        }
        close(out)
        let final = folder + "/new/" + name
        try FileIO.rename(tmp, final)
        try CrashPoint.reached(.maildirRenamed)
        try sync(for: folder + "/new").sync()
        return final
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
