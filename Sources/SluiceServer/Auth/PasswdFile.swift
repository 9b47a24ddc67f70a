import CCrypt
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The users of `[auth] users`: a passwd-style file of `user:hash` lines (more `:` fields are
/// ignored, `#` starts a comment), the hash in crypt(3) form as libxcrypt makes it (yescrypt
/// `$y$`, bcrypt `$2b$`, sha512-crypt `$6$`, sha256-crypt `$5$`). Plaintext is never accepted.
/// The file is read again when it changes (`sluice passwd` takes effect without a restart).
public final class PasswdFile: Authenticator {
    public let path: String
    private let logger: Logger
    private let state = Mutex<(entries: [String: String], modified: timespec?, size: Int)>(([:], nil, -1))

    /// - Throws: `PasswdFile.Error` when the file cannot be read.
    public init(path: String, logger: Logger) throws {
        self.path = path
        self.logger = logger
        try reloadIfChanged(force: true)
    }

    public struct Error: Swift.Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// The hash prefixes accepted.
    static let schemes = ["$y$", "$gy$", "$7$", "$2b$", "$2y$", "$2a$", "$6$", "$5$"]

    static func parse(_ text: String) -> (entries: [String: String], rejected: [String]) {
        var entries: [String: String] = [:]
        var rejected: [String] = []
        for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
            if line.hasPrefix("#") || line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count >= 2, !fields[0].isEmpty else { continue }
            let user = String(fields[0])
            let hash = String(fields[1])
            guard schemes.contains(where: { hash.hasPrefix($0) }) else {
                rejected.append(user)
                continue
            }
            entries[user] = hash
        }
        return (entries, rejected)
    }

    private func reloadIfChanged(force: Bool = false) throws {
        var st = stat()
        guard stat(path, &st) == 0 else { throw Error(description: "cannot read \(path): \(String(cString: strerror(errno)))") }
        let changed = state.withLock { s in
            guard let m = s.modified else { return true }
            return m.tv_sec != st.st_mtim.tv_sec || m.tv_nsec != st.st_mtim.tv_nsec || s.size != Int(st.st_size)
        }
        guard force || changed else { return }
        guard let text = Self.read(path) else { throw Error(description: "cannot read \(path)") }
        let (entries, rejected) = Self.parse(text)
        for user in rejected {
            logger.warning("auth users: entry ignored, its password is not a crypt(3) hash", metadata: ["file": "\(path)", "user": "\(user)"])
        }
        state.withLock { $0 = (entries, st.st_mtim, Int(st.st_size)) }
    }

    /// A whole small file as text (nil when it cannot be read).
    public static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &buffer, buffer.count)
            if n < 0 { return nil }
            if n == 0 { break }
            bytes += buffer[0..<n]
            if bytes.count > 16 << 20 { return nil }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public func verify(user: String, password: String) -> Bool {
        do { try reloadIfChanged() } catch { logger.error("auth users: \(error)") }
        guard let hash = state.withLock({ $0.entries[user] }) else {
            // Spend about the same time as a real check, so timing does not tell which users exist.
            _ = Self.crypt(password, setting: "$6$rounds=5000$sluiceunknownuse")
            return false
        }
        guard let computed = Self.crypt(password, setting: hash) else { return false }
        return Self.constantTimeEqual(Array(computed.utf8), Array(hash.utf8))
    }

    /// crypt_rn(3): the hash of `password` with the algorithm and salt of `setting`.
    static func crypt(_ password: String, setting: String) -> String? {
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer {
            memset(data, 0, MemoryLayout<crypt_data>.size)  // no password material left behind
            data.deallocate()
        }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        guard let out = crypt_rn(password, setting, data, Int32(MemoryLayout<crypt_data>.size)) else { return nil }
        let result = String(cString: out)
        return result.hasPrefix("*") ? nil : result  // "*0"/"*1": an invalid setting
    }

    /// A new hash for `password` (`sluice passwd`): yescrypt unless another prefix is asked for.
    public static func hash(_ password: String, scheme: String = "$y$") -> String? {
        var setting = [CChar](repeating: 0, count: Int(CRYPT_GENSALT_OUTPUT_SIZE))
        guard crypt_gensalt_rn(scheme, 0, nil, 0, &setting, Int32(setting.count)) != nil else { return nil }
        return crypt(password, setting: setting.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<a.count { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}
