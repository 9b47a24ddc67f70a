import COpenDKIM
import SMTPCore
import SluiceStageAPI
#if canImport(Glibc)
import Glibc
#endif

/// `use = "dkim-sign"`: signs mail whose From domain has a key (RFC 6376; rsa-sha256 and
/// ed25519-sha256, RFC 8463) with libopendkim, at end of message, over the message as the
/// stages before it left it. It seals the message: the chain refuses any header- or
/// body-changing stage after it.
///
/// ```toml
/// [[stage]]
/// use = "dkim-sign"
/// [[stage.keys]]
/// domain = "example.test"
/// selector = "s2026"
/// key = "keys/example.test.s2026.pem"   # PEM private key (RSA >= 1024 bits, or Ed25519)
/// algorithm = "rsa-sha256"              # or "ed25519-sha256"
/// ```
///
/// Keys:
/// - `keys` (required): tables of `domain`, `selector`, `key`, `algorithm` (default rsa-sha256).
///   Several tables for one domain make several signatures (e.g. rsa and ed25519).
/// - `canonicalization` (default "relaxed/relaxed"): header/body, each "simple" or "relaxed".
/// - `headers` (default: From, Reply-To, Subject, Date, To, Cc, In-Reply-To, References,
///   Message-ID, MIME-Version, Content-Type, Content-Transfer-Encoding, Content-Disposition,
///   Resent-*, List-*): the fields signed when present.
/// - `oversign` (default ["From"]): fields signed once more than they occur, so none can be added.
/// - `expire_s` (default 0 = no `x=`): signature lifetime.
/// - `sign` (default "trusted"): whose mail is signed: "trusted" (relay_from clients and
///   authenticated users) or "all".
/// - `subdomains` (default false): a key also signs mail from subdomains of its domain.
public struct DKIMSignStage: Stage {
    struct Key: Sendable {
        var domain: String
        var selector: String
        var pem: String
        var algorithm: dkim_alg_t
    }

    let keys: [Key]
    let headerCanon: dkim_canon_t
    let bodyCanon: dkim_canon_t
    let expire: Int
    let signAll: Bool
    let subdomains: Bool
    let library: DKIMLibrary

    public var phases: Set<StagePhase> { [.endOfMessage] }
    public var capabilities: StageCapabilities { [.readsBody, .addsHeaders, .sealsMessage] }

    public static let factory = StageFactory(
        name: "dkim-sign", summary: "DKIM-signs mail of domains with a key (libopendkim; rsa-sha256, ed25519-sha256); seals the message"
    ) { config, environment in try DKIMSignStage(config: config, environment: environment) }

    public static let defaultHeaders = [
        "From", "Reply-To", "Subject", "Date", "To", "Cc", "In-Reply-To", "References", "Message-ID", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Resent-Date", "Resent-From", "Resent-To",
        "Resent-Cc", "Resent-Message-ID", "List-Id", "List-Help", "List-Unsubscribe", "List-Subscribe", "List-Post",
        "List-Owner", "List-Archive",
    ]

    public init(config: ConfigTable, environment: StageEnvironment) throws {
        guard case .array(let items)? = config.value("keys"), !items.isEmpty else {
            throw config.error("keys", "missing: [[stage.keys]] tables with domain, selector, key, algorithm")
        }
        var keys: [Key] = []
        for (i, item) in items.enumerated() {
            guard case .table(let values) = item else { throw config.error("keys", "entry \(i + 1) is not a table") }
            let t = ConfigTable(path: "\(config.path).keys[\(i + 1)]", file: config.file, values: values)
            guard let domain = try t.string("domain")?.lowercased(), !domain.isEmpty else { throw t.error("domain", "missing") }
            guard let selector = try t.string("selector"), !selector.isEmpty else { throw t.error("selector", "missing") }
            guard let keyPath = try t.string("key") else { throw t.error("key", "missing: a PEM private key file") }
            let algorithmName = try t.choice("algorithm", ["rsa-sha256", "ed25519-sha256"], default: "rsa-sha256")
            try t.finish()
            let path = environment.resolvePath(keyPath)
            guard let pem = Self.read(path), pem.contains("PRIVATE KEY") else {
                throw t.error("key", "cannot read a PEM private key from \(path)")
            }
            keys.append(Key(domain: domain, selector: selector, pem: pem,
                            algorithm: algorithmName == "ed25519-sha256" ? DKIM_SIGN_ED25519SHA256 : DKIM_SIGN_RSASHA256))
        }
        self.keys = keys
        let canon = try config.string("canonicalization", default: "relaxed/relaxed").lowercased()
        let parts = canon.split(separator: "/").map(String.init)
        func parse(_ s: String) -> dkim_canon_t? { s == "simple" ? DKIM_CANON_SIMPLE : s == "relaxed" ? DKIM_CANON_RELAXED : nil }
        guard (1...2).contains(parts.count), let h = parse(parts[0]), let b = parse(parts.count == 2 ? parts[1] : "simple") else {
            throw config.error("canonicalization", "'\(canon)' is not header/body with simple or relaxed")
        }
        headerCanon = h
        bodyCanon = b
        // libopendkim 2.11 makes ed25519 signatures that do not verify with simple header
        // canonicalization (the body hash is right, the header signature wrong).
        if h == DKIM_CANON_SIMPLE, keys.contains(where: { $0.algorithm == DKIM_SIGN_ED25519SHA256 }) {
            throw config.error("canonicalization", "ed25519-sha256 keys need relaxed header canonicalization (libopendkim signs simple/* wrongly): use \"relaxed/\(parts.count == 2 ? parts[1] : "simple")\"")
        }
        let headers = try config.strings("headers", default: Self.defaultHeaders)
        guard headers.contains(where: { $0.caseInsensitiveEquals("From") }) else {
            throw config.error("headers", "From must be signed (RFC 6376 5.4)")
        }
        let oversign = try config.strings("oversign", default: ["From"])
        expire = try config.int("expire_s", default: 0, range: 0...(10 * 365 * 86_400))
        signAll = try config.choice("sign", ["trusted", "all"], default: "trusted") == "all"
        subdomains = try config.bool("subdomains", default: false)
        library = try DKIMLibrary(signedHeaders: headers, oversignedHeaders: oversign)
        if expire > 0 {
            var ttl = UInt64(expire)
            _ = dkim_options(library.handle, DKIM_OP_SETOPT, DKIM_OPTS_SIGNATURETTL, &ttl, MemoryLayout<UInt64>.size)
        }
        // A key libopendkim cannot use is a startup error, not a failure on the first message.
        for key in keys {
            do {
                _ = try sign(headers: [HeaderField(name: "From", value: " test@\(key.domain)")], body: [Array("test\r\n".utf8)], with: key)
            } catch {
                throw config.error("keys", "the key for \(key.selector)._domainkey.\(key.domain) does not sign: \(error)")
            }
        }
    }

    static func read(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n <= 0 { break }
            out += buffer[0..<n]
            if out.count > 1 << 20 { return nil }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The keys for the From domain: exact, or a parent when `subdomains`.
    func keys(for domain: String) -> [Key] {
        let d = domain.lowercased()
        let exact = keys.filter { $0.domain == d }
        if !exact.isEmpty || !subdomains { return exact }
        return keys.filter { d.hasSuffix("." + $0.domain) }
    }

    public func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
        guard signAll || session.trustedClient else { return StageDecision() }
        guard let from = message.headers.first(where: { $0.name.caseInsensitiveEquals("From") }),
              let domain = Self.fromDomain(from.unfoldedValue) else { return StageDecision() }
        let matching = keys(for: domain)
        guard !matching.isEmpty else { return StageDecision() }
        // One libopendkim handle per key; the body streams through all of them once.
        let signers = try matching.map { try Signer(self, key: $0, headers: message.headers) }
        for try await chunk in message.body {
            for signer in signers { try signer.body(chunk) }
        }
        var edits: [MessageEdit] = []
        for signer in signers {
            edits.append(.insertHeader(index: 0, name: "DKIM-Signature", value: try signer.finish()))
        }
        return StageDecision(.continue, edits: edits.reversed())
    }

    /// The address domain of a From field value (its first address; RFC 5322 3.4).
    static func fromDomain(_ value: String) -> String? {
        HeaderAddress.parseList(value).first?.domain
    }

    /// One signature's field value (without the `DKIM-Signature:` name), for a message in memory.
    func sign(headers: [HeaderField], body: [[UInt8]], with key: Key) throws -> String {
        let signer = try Signer(self, key: key, headers: headers)
        for chunk in body { try signer.body(chunk) }
        return try signer.finish()
    }

    /// One libopendkim signing handle: header section first, then body chunks, then the field.
    ///
    /// `@unchecked Sendable`: used by one task from start to finish; the handle is freed with it.
    final class Signer: @unchecked Sendable {
        private let dkim: OpaquePointer

        init(_ stage: DKIMSignStage, key: Key, headers: [HeaderField]) throws {
            var status: DKIM_STAT = DKIM_STAT_OK
            let handle = key.pem.withCString { pem in
                dkim_sign(stage.library.handle, "sluice", nil, UnsafeMutableRawPointer(mutating: pem).assumingMemoryBound(to: UInt8.self),
                          key.selector, key.domain, stage.headerCanon, stage.bodyCanon, key.algorithm, -1, &status)
            }
            guard let handle else { throw DKIMError("dkim_sign failed (\(status))") }
            dkim = handle
            for field in headers {
                var bytes = Array("\(field.name):\(field.value)".utf8)
                guard dkim_header(dkim, &bytes, bytes.count) == DKIM_STAT_OK else { throw DKIMError("dkim_header failed") }
            }
            guard dkim_eoh(dkim) == DKIM_STAT_OK else { throw DKIMError("dkim_eoh failed") }
        }

        deinit { dkim_free(dkim) }

        func body(_ chunk: [UInt8]) throws {
            guard !chunk.isEmpty else { return }
            var bytes = chunk
            guard dkim_body(dkim, &bytes, bytes.count) == DKIM_STAT_OK else { throw DKIMError("dkim_body failed") }
        }

        func finish() throws -> String {
            let end = dkim_eom(dkim, nil)
            guard end == DKIM_STAT_OK else {
                throw DKIMError("dkim_eom: \(dkim_geterror(dkim).map { String(cString: $0) } ?? "status \(end)")")
            }
            var buf: UnsafeMutablePointer<UInt8>?
            var length = 0
            guard dkim_getsighdr_d(dkim, "DKIM-Signature: ".utf8.count, &buf, &length) == DKIM_STAT_OK, let buf else {
                throw DKIMError("dkim_getsighdr_d failed")
            }
            // libopendkim folds with LF and a tab; header fields here use CRLF.
            let text = String(decoding: UnsafeBufferPointer(start: buf, count: length), as: UTF8.self)
            return " " + text.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\n", with: "\r\n")
        }
    }
}

private extension Substring {
    func trimmingCharacters(in set: String) -> String {
        String(drop(while: { set.contains($0) }).reversed().drop(while: { set.contains($0) }).reversed())
    }
}

private extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
