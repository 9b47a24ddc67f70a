import COpenDKIM
import SMTPCore
import SluiceStageAPI
import Synchronization

/// `use = "dkim-verify"`: verifies every DKIM-Signature (RFC 6376; rsa-sha256, ed25519-sha256
/// per RFC 8463; rsa-sha1 is reported as `policy`, RFC 8301) with libopendkim.
///
/// The message goes to libopendkim as it streams in (the header section, then each body
/// chunk). Keys are resolved through the gateway's resolver as soon as the header section
/// has named them; libopendkim's key lookup then only reads those answers.
///
/// Keys:
/// - `fail` (default "tag"): when no signature passes and one fails: `"tag"`, `"reject"`
///   (550 5.7.20), `"tempfail"` (451 4.7.20).
/// - `temperror` (default "tag"): when no signature passes and a key could not be fetched:
///   `"tag"` or `"tempfail"` (451 4.7.20).
///
/// Each signature's result is recorded for Authentication-Results:
/// `dkim=pass header.d=example.org header.s=sel header.a=rsa-sha256 header.b=AbCdEfGh`.
public struct DKIMVerifyStage: Stage {
    public enum Action: String, Sendable, CaseIterable { case tag, reject, tempfail }

    public let failAction: Action
    public let temperrorAction: Action
    let library: DKIMLibrary
    let resolver: any DNSResolver

    public var phases: Set<StagePhase> { [.data, .endOfMessage] }
    public var capabilities: StageCapabilities { .readsBody }

    public static let factory = StageFactory(
        name: "dkim-verify", summary: "verifies DKIM signatures with libopendkim as the message streams; results to Authentication-Results"
    ) { config, environment in try DKIMVerifyStage(config: config, environment: environment) }

    public init(config: ConfigTable, environment: StageEnvironment) throws {
        failAction = Action(rawValue: try config.choice("fail", Action.allCases.map(\.rawValue), default: "tag"))!
        temperrorAction = Action(rawValue: try config.choice("temperror", ["tag", "tempfail"], default: "tag"))!
        library = try DKIMLibrary()
        resolver = environment.resolver
    }

    /// The result of one signature, kept for the dmarc stage.
    public struct SignatureResult: Sendable, Hashable {
        public var domain: String
        public var selector: String
        public var algorithm: String
        public var result: String
        public var reason: String?
        /// The first characters of `b=` (RFC 8601 `header.b`).
        public var signaturePrefix: String
    }

    /// The results of every signature of the message, one per DKIM-Signature field in order (none
    /// when unsigned). A field that cannot be used (no or another `v=`, an unknown `a=`, a missing
    /// required tag, a syntax error, `i=` outside `d=`, a message without From) is `permerror`
    /// (RFC 6376 6.1.1 PERMFAIL), with the `d=`, `s=` and `a=` it names.
    public static let resultsKey = StateKey<[SignatureResult]>("dkim.results")
    static let verificationKey = StateKey<Verification>("dkim.verification")

    public func headers(_ headers: [HeaderField], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        let verification = try Verification(library: library, id: transaction.queueID)
        transaction.state[Self.verificationKey] = verification
        let hasFrom = headers.contains { $0.name.caseInsensitiveEquals("From") }
        verification.fields = headers.filter { $0.name.caseInsensitiveEquals("DKIM-Signature") }
            .map { DKIMSignatureField(value: $0.value, messageHasFrom: hasFrom) }
        for field in headers { verification.header(Array("\(field.name):\(field.value)".utf8)) }
        let names = verification.endOfHeaders()
        // Keys the resolver has cached are taken at once; the others are fetched while the
        // body streams in.
        let keys = verification.keys
        let resolver = self.resolver
        var missing: [String] = []
        for name in Set(names.map { $0.lowercased() }) {
            if let cached = resolver.cachedAnswer(name, .txt) {
                keys.set(name, DKIMKeys.answer(from: cached))
            } else {
                missing.append(name)
            }
        }
        guard !missing.isEmpty else { return .continue }
        verification.fetching = Task {
            await withTaskGroup(of: Void.self) { group in
                for name in missing {
                    group.addTask { keys.set(name, await DKIMKeys.fetch(name, resolver: resolver)) }
                }
            }
        }
        return .continue
    }

    public func bodyChunk(_ chunk: [UInt8], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        transaction.state[Self.verificationKey]?.body(chunk)
        return .continue
    }

    public func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
        guard let verification = transaction.state[Self.verificationKey] else { return StageDecision() }
        await verification.fetching?.value
        let results = verification.finish()
        transaction.state[Self.resultsKey] = results
        if results.isEmpty {
            transaction.results.record(AuthenticationResult(method: "dkim", result: "none"))
            return StageDecision()
        }
        for r in results {
            transaction.results.record(AuthenticationResult(
                method: "dkim", result: r.result, reason: r.reason,
                properties: [.init("header.d", r.domain), .init("header.s", r.selector), .init("header.a", r.algorithm),
                             .init("header.b", r.signaturePrefix)]
            ))
        }
        if results.contains(where: { $0.result == "pass" }) { return StageDecision() }
        if results.contains(where: { $0.result == "fail" }) {
            switch failAction {
            case .tag: break
            case .reject: return StageDecision(.reject(550, "5.7.20", "No passing DKIM signature found"))
            case .tempfail: return StageDecision(.tempfail(451, "4.7.20", "No passing DKIM signature found"))
            }
        }
        if results.contains(where: { $0.result == "temperror" }), temperrorAction == .tempfail {
            return StageDecision(.tempfail(451, "4.7.20", "DKIM key lookup failed, try again later"))
        }
        return StageDecision()
    }
}

extension DKIMVerifyStage {
    /// One message's libopendkim verifying handle.
    ///
    /// `@unchecked Sendable`: the stage calls it one phase at a time (header section, body
    /// chunks, end of message), never concurrently; the handle is freed with the object.
    final class Verification: @unchecked Sendable {
        private let dkim: OpaquePointer
        let keys = DKIMKeys()
        var fetching: Task<Void, Never>?
        /// The message's DKIM-Signature fields as read by Sluice, in order.
        var fields: [DKIMSignatureField] = []
        /// libopendkim took the header section and found signatures it can verify.
        private var signed = true
        /// Why libopendkim could not take the header section, when it could not.
        private var headerError: String?

        init(library: DKIMLibrary, id: String) throws {
            var status: DKIM_STAT = DKIM_STAT_OK
            guard let handle = dkim_verify(library.handle, id, nil, &status) else {
                throw DKIMError("libopendkim: dkim_verify failed (\(status))")
            }
            dkim = handle
            _ = dkim_set_user_context(dkim, Unmanaged.passUnretained(keys).toOpaque())
        }

        deinit {
            fetching?.cancel()
            dkim_free(dkim)
        }

        func header(_ bytes: [UInt8]) {
            var b = bytes
            _ = dkim_header(dkim, &b, b.count)
        }

        /// Ends the header section; returns the key names the signatures need.
        func endOfHeaders() -> [String] {
            let status = dkim_eoh(dkim)
            guard status == DKIM_STAT_OK else {
                signed = false
                if status != DKIM_STAT_NOSIG {
                    headerError = "libopendkim: " + (dkim_geterror(dkim).map { String(cString: $0) } ?? "status \(status)")
                }
                return []
            }
            return signatures().compactMap { sig in
                guard let s = dkim_sig_getselector(sig), let d = dkim_sig_getdomain(sig) else { return nil }
                return "\(String(cString: s))._domainkey.\(String(cString: d))"
            }
        }

        func body(_ chunk: [UInt8]) {
            guard signed, !chunk.isEmpty else { return }
            var b = chunk
            _ = dkim_body(dkim, &b, b.count)
        }

        private func signatures() -> [OpaquePointer] {
            var list: UnsafeMutablePointer<OpaquePointer?>?
            var count: Int32 = 0
            guard dkim_getsiglist(dkim, &list, &count) == DKIM_STAT_OK, let list else { return [] }
            return (0..<Int(count)).compactMap { list[$0] }
        }

        /// One signature as libopendkim parsed it.
        private struct ParsedSignature {
            var handle: OpaquePointer
            var domain: String
            var selector: String
            /// The shortest start of `b=` that tells this signature from the others.
            var substring: String
        }

        /// Ends the message and reads each signature's verdict: one result per DKIM-Signature
        /// field, whether or not libopendkim could use it.
        func finish() -> [SignatureResult] {
            var parsed: [ParsedSignature?] = []
            if signed {
                var testKey = false
                if dkim_eom(dkim, &testKey) != DKIM_STAT_NOSIG {
                    parsed = signatures().map { sig in
                        var prefix = [CChar](repeating: 0, count: 128)
                        var length = prefix.count
                        _ = dkim_get_sigsubstring(dkim, sig, &prefix, &length)
                        return ParsedSignature(
                            handle: sig, domain: dkim_sig_getdomain(sig).map { String(cString: $0) } ?? "",
                            selector: dkim_sig_getselector(sig).map { String(cString: $0) } ?? "",
                            substring: prefix.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
                    }
                }
            }
            return fields.map { field in
                func result(_ result: String, _ reason: String?) -> SignatureResult {
                    SignatureResult(domain: field.domain, selector: field.selector, algorithm: field.algorithm,
                                    result: result, reason: reason, signaturePrefix: String(field.signature.prefix(8)))
                }
                if let problem = field.problem { return result("permerror", problem) }
                // The signature libopendkim made of this field: same d= and s=, b= starting alike.
                guard let i = parsed.firstIndex(where: { p in
                    guard let p else { return false }
                    return p.domain.caseInsensitiveEquals(field.domain) && p.selector == field.selector
                        && !p.substring.isEmpty && field.signature.hasPrefix(p.substring)
                }), let sig = parsed[i]?.handle else {
                    return result("permerror", headerError ?? "signature not usable")
                }
                parsed[i] = nil
                var (verdict, reason) = Self.verdict(sig, algorithm: field.algorithm.lowercased())
                if verdict != "pass", case .error? = keys.answer("\(field.selector)._domainkey.\(field.domain)".lowercased()) {
                    // libopendkim does not mark a key lookup that had to be tried again.
                    (verdict, reason) = ("temperror", "key lookup failed")
                }
                return result(verdict, reason)
            }
        }

        /// RFC 8601 2.7.1 results from libopendkim's flags and error.
        static func verdict(_ sig: OpaquePointer, algorithm: String) -> (String, String?) {
            let flags = dkim_sig_getflags(sig)
            let error = dkim_sig_geterror(sig)
            let why = error == DKIM_SIGERROR_OK ? nil : dkim_sig_geterrorstr(error).map { String(cString: $0) }
            if flags & UInt32(DKIM_SIGFLAG_PASSED) != 0 && dkim_sig_getbh(sig) == DKIM_SIGBH_MATCH {
                // RFC 8301 3.1: rsa-sha1 must not be considered valid.
                return algorithm == "rsa-sha1" ? ("policy", "rsa-sha1 is not accepted (RFC 8301)") : ("pass", nil)
            }
            switch error {
            case DKIM_SIGERROR_KEYFAIL:
                return ("temperror", why ?? "key query failed")
            case DKIM_SIGERROR_NOKEY, DKIM_SIGERROR_KEYREVOKED, DKIM_SIGERROR_KEYDECODE, DKIM_SIGERROR_DNSSYNTAX,
                 DKIM_SIGERROR_MULTIREPLY, DKIM_SIGERROR_KEYVERSION, DKIM_SIGERROR_KEYTYPEUNKNOWN, DKIM_SIGERROR_KEYTYPEMISSING,
                 DKIM_SIGERROR_NOTEMAILKEY, DKIM_SIGERROR_KEYHASHMISMATCH, DKIM_SIGERROR_KEYUNKNOWNHASH:
                return ("permerror", why)
            case DKIM_SIGERROR_KEYTOOSMALL:
                return ("policy", why)
            case DKIM_SIGERROR_BADSIG, DKIM_SIGERROR_EXPIRED, DKIM_SIGERROR_FUTURE:
                return ("fail", why)
            case DKIM_SIGERROR_OK:
                // Processed but not passed: the body hash did not match.
                return ("fail", dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH ? "body hash mismatch" : "signature did not verify")
            default:
                return ("neutral", why)
            }
        }
    }
}

