import CDKIMKeyCache
import Foundation
import Logging
import SMTPCore
import SluiceDNS
import SluiceStageAPI
@testable import SluiceStages
import Testing

/// Fixed keys (made with `openssl genpkey`) and the zone that publishes them.
enum DKIMFixtures {
    static let rsaPEM = """
        -----BEGIN PRIVATE KEY-----
        MIICdwIBADANBgkqhkiG9w0BAQEFAASCAmEwggJdAgEAAoGBAM+bMtg/vR2V941z
        0mqFOaHfTciZ0xphyApNXggfcsW5XsgqTpSxGG90Du81l/FZo7/QTTNP0zzu9CBn
        ioVN/aM7t9h3bGnqVrlsrBql9HC+5R6ySJOPoN5tIerCpEYMFtTYlcwLtQuW3qt/
        JVkTZWHUBK7udI4Htn5xiIIO41YlAgMBAAECgYEAr2MH81T1qbb2KhQ9ISxn4e7K
        wbvichlFbB6sX+Rhi9Ts0+GZ/VgXsqCztTbrpEP8aKHLdpvrc0DUEUQn7DJVITk1
        NMcPZ/k34Xrr6qco8srKEFcVPwSAZyma06vMTWWc2uZBmu8lkcVdyFwmGMLjHf/S
        jGQDNH7L/5pnGhdQGAECQQD5CBXJY7wWZe1n6c7tuzQtBeTuZTS5rDvbfjbyZKbG
        yQzZzGI6GsLOAclBc2+8f6Y77J8GPUwjobx8YF/wpVklAkEA1Wpd7S9BSVbGlik5
        Fw8fm5GWU/Bv0MB9WPO3L5mkPK8XQpjEBnDcO4Z508Mbk6xBUZHS3IUCKoIW8Nga
        SJX5AQJAAb94x60XiOC2ReByP2DtANPlw3aaZCM9WFEOea0TLpoCqRSyK848R83j
        Z74zrpMGy6zhgN21Rxq/g+/5PGsssQJAGoRX3VOkygcFL705gbr4U20Yf599VTPF
        n1rQ5RIzDPM4cabnnGFDjAXed0hj0cpyZz82Mv430a5OSWigg2pXAQJBANaYkr3G
        cdvil00Eq5/PJWH2bK1tEBFnXrMrDmWW5Xu7ObnyorAtNMtCs99idiOjCmUedYrc
        LX9Irf1OjeHJ/r8=
        -----END PRIVATE KEY-----

        """
    static let rsaRecord = "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDPmzLYP70dlfeNc9JqhTmh303ImdMaYcgKTV4IH3LFuV7IKk6UsRhvdA7vNZfxWaO/0E0zT9M87vQgZ4qFTf2jO7fYd2xp6la5bKwapfRwvuUeskiTj6DebSHqwqRGDBbU2JXMC7ULlt6rfyVZE2Vh1ASu7nSOB7Z+cYiCDuNWJQIDAQAB"
    static let edPEM = """
        -----BEGIN PRIVATE KEY-----
        MC4CAQAwBQYDK2VwBCIEILVUzYQ6astyPuBjv8WmIlLlJj5zC7FJJnaUi+0sEE/E
        -----END PRIVATE KEY-----

        """
    static let edRecord = "v=DKIM1; k=ed25519; p=Tn0O97PTWjw3wliZPkvJoCL81V8vpODiq4oM1ESZDYU="

    /// A directory with rsa.pem, ed.pem and notakey.pem.
    static let directory: String = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-dkim-tests-\(getpid())")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try! rsaPEM.write(to: dir.appendingPathComponent("rsa.pem"), atomically: true, encoding: .utf8)
        try! edPEM.write(to: dir.appendingPathComponent("ed.pem"), atomically: true, encoding: .utf8)
        try! "not a key\n".write(to: dir.appendingPathComponent("notakey.pem"), atomically: true, encoding: .utf8)
        return dir.path
    }()

    static let zone: StaticResolver = {
        var z = StaticResolver()
        z.addText("rsa._domainkey.example.org", rsaRecord)
        z.addText("ed._domainkey.example.org", edRecord)
        // a key published as several character-strings
        z.add("split._domainkey.example.org", .txt, .txt(stride(from: 0, to: rsaRecord.utf8.count, by: 100).map {
            Array(Array(rsaRecord.utf8)[$0..<min($0 + 100, rsaRecord.utf8.count)])
        }))
        z.addText("revoked._domainkey.example.org", "v=DKIM1; k=rsa; p=")
        z.addTimeout("slow._domainkey.example.org")
        z.addText("wrong._domainkey.example.org", edRecord)
        // DMARC
        z.addText("_dmarc.example.org", "v=DMARC1; p=reject; sp=none")
        z.addText("_dmarc.q.example.net", "v=DMARC1; p=quarantine")
        z.addText("_dmarc.none.example.net", "v=DMARC1; p=none")
        z.addText("_dmarc.strict.example.net", "v=DMARC1; p=reject; aspf=s; adkim=s")
        z.addText("_dmarc.example.com", "v=DMARC1; p=quarantine; sp=reject")
        z.addText("_dmarc.bad.example.net", "v=DMARC1; p=sometimes")
        z.addTimeout("_dmarc.slow.example.net")
        z.addText("example.net", "v=spf1 -all")
        return z
    }()

    static func environment(_ resolver: any DNSResolver = zone) -> StageEnvironment {
        StageEnvironment(hostname: "mx.example.test", configDirectory: directory, logger: Logger(label: "dkim-test"), resolver: resolver)
    }
}

/// The message the DKIM tests sign and verify.
let dkimHeaders = [
    HeaderField(name: "From", value: " Alice <alice@example.org>"),
    HeaderField(name: "To", value: " <bob@example.test>"),
    HeaderField(name: "Subject", value: " a folded\r\n\tsubject"),
    HeaderField(name: "Date", value: " Sun, 29 Nov 2026 12:00:00 +0000"),
    HeaderField(name: "Message-ID", value: " <unit@example.org>"),
]
let dkimBody = Array("Hello  there,\t\r\nsecond line \r\n\r\n\r\n".utf8)

/// A body served in chunks of `size` octets.
func chunked(_ bytes: [UInt8], _ size: Int) -> [[UInt8]] {
    stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min($0 + size, bytes.count)]) }
}

func chunkedBody(_ chunks: [[UInt8]]) -> MessageBody {
    MessageBody {
        var rest = chunks
        return { rest.isEmpty ? nil : rest.removeFirst() }
    }
}

func keyTable(_ selector: String, file: String, algorithm: String = "rsa-sha256", domain: String = "example.org") -> ConfigValue {
    .table(["domain": .string(domain), "selector": .string(selector), "key": .string(file), "algorithm": .string(algorithm)])
}

@Suite("DKIM sign and verify")
struct DKIMTests {
    static func signer(_ keys: [ConfigValue] = [keyTable("rsa", file: "rsa.pem")], _ values: [String: ConfigValue] = [:]) throws -> DKIMSignStage {
        let config = table(values.merging(["keys": .array(keys)]) { a, _ in a })
        let stage = try DKIMSignStage(config: config, environment: DKIMFixtures.environment())
        try config.finish()
        return stage
    }

    static func verifier(_ values: [String: ConfigValue] = [:]) throws -> DKIMVerifyStage {
        let config = table(values)
        let stage = try DKIMVerifyStage(config: config, environment: DKIMFixtures.environment())
        try config.finish()
        return stage
    }

    /// Signs the message; returns the DKIM-Signature values in the order of the inserted fields.
    static func sign(_ stage: DKIMSignStage, headers: [HeaderField] = dkimHeaders, body: [UInt8] = dkimBody,
                     trusted: Bool = true, chunk: Int = 7) async throws -> [String] {
        var s = session(client: "192.0.2.1")
        s.trustedClient = trusted
        let view = MessageView(headers: headers, body: chunkedBody(chunked(body, chunk)), receivedSize: body.count)
        let decision = try await stage.endOfMessage(view, session: s, transaction: transaction(.mailbox(mb("alice@example.org"))))
        #expect(decision.verdict == .continue)
        return try decision.edits.map { edit in
            guard case .insertHeader(0, let field) = edit, field.name == "DKIM-Signature" else {
                throw DKIMError("unexpected edit \(edit)")
            }
            return field.value
        }
    }

    /// Runs the verifier over the message as the session would: header section, body chunks, end.
    static func verify(_ stage: DKIMVerifyStage, signatures: [String], headers: [HeaderField] = dkimHeaders,
                       body: [UInt8] = dkimBody, chunk: Int = 5) async throws -> (StageDecision, [AuthenticationResult], [DKIMVerifyStage.SignatureResult]) {
        let all = signatures.map { HeaderField(name: "DKIM-Signature", value: $0) } + headers
        let s = session(client: "192.0.2.1")
        let t = transaction(.mailbox(mb("alice@example.org")))
        #expect(try await stage.headers(all, session: s, transaction: t) == .continue)
        for piece in chunked(body, chunk) {
            #expect(try await stage.bodyChunk(piece, session: s, transaction: t) == .continue)
        }
        let view = MessageView(headers: all, body: MessageBody(bytes: body), receivedSize: body.count)
        let decision = try await stage.endOfMessage(view, session: s, transaction: t)
        return (decision, t.results.all, t.state[DKIMVerifyStage.resultsKey] ?? [])
    }

    /// The tags of a DKIM-Signature value, white space removed.
    static func tags(_ value: String) -> [String: String] {
        var out: [String: String] = [:]
        for part in value.filter({ !$0.isWhitespace }).split(separator: ";") {
            guard let eq = part.firstIndex(of: "=") else { continue }
            out[String(part[..<eq])] = String(part[part.index(after: eq)...])
        }
        return out
    }

    @Test func factoriesAndCapabilities() throws {
        #expect(DKIMSignStage.factory.name == "dkim-sign")
        #expect(DKIMVerifyStage.factory.name == "dkim-verify")
        let signer = try Self.signer()
        #expect(signer.phases == [.endOfMessage])
        #expect(signer.capabilities.contains(.sealsMessage))
        #expect(signer.capabilities.contains(.addsHeaders))
        let verifier = try Self.verifier()
        #expect(verifier.phases == [.data, .endOfMessage])
        #expect(verifier.capabilities == .readsBody)
        #expect(verifier.failAction == .tag)
        #expect(verifier.temperrorAction == .tag)
    }

    @Test(arguments: [("rsa", "rsa.pem", "rsa-sha256"), ("ed", "ed.pem", "ed25519-sha256")])
    func signThenVerifyPasses(selector: String, file: String, algorithm: String) async throws {
        let signer = try Self.signer([keyTable(selector, file: file, algorithm: algorithm)])
        let signatures = try await Self.sign(signer)
        #expect(signatures.count == 1)
        let t = Self.tags(signatures[0])
        #expect(t["a"] == algorithm)
        #expect(t["d"] == "example.org")
        #expect(t["s"] == selector)
        #expect(t["c"] == "relaxed/relaxed")
        #expect(t["h"].map { $0.lowercased().split(separator: ":").filter { $0 == "from" }.count } == 2)
        #expect(signatures[0].hasPrefix(" "))
        #expect(!signatures[0].contains("\n") || signatures[0].contains("\r\n"))
        #expect(!signatures[0].replacingOccurrences(of: "\r\n", with: "").contains("\n"), "folding must be CRLF")

        let (decision, results, sigs) = try await Self.verify(try Self.verifier(), signatures: signatures)
        #expect(decision.verdict == .continue)
        #expect(decision.edits.isEmpty)
        #expect(sigs.count == 1)
        #expect(sigs.first?.result == "pass")
        #expect(sigs.first?.algorithm == algorithm)
        #expect(sigs.first?.signaturePrefix == String(t["b"]!.prefix(8)))
        // header.b is a pvalue: quoted when the base64 holds a "/" (a MIME tspecial; RFC 8601 2.2).
        let b = String(t["b"]!.prefix(8))
        let bValue = b.contains("/") || b.contains("=") ? "\"\(b)\"" : b
        #expect(results.map(\.resinfo) == ["dkim=pass header.d=example.org header.s=\(selector) header.a=\(algorithm) header.b=\(bValue)"])
    }

    @Test func simpleCanonicalizationWithRSA() async throws {
        let signer = try Self.signer([keyTable("rsa", file: "rsa.pem")], ["canonicalization": .string("simple/simple")])
        let signatures = try await Self.sign(signer)
        #expect(Self.tags(signatures[0])["c"] == "simple/simple")
        let (_, _, sigs) = try await Self.verify(try Self.verifier(), signatures: signatures)
        #expect(sigs.map(\.result) == ["pass"])
    }

    /// libopendkim 2.11 signs ed25519 with simple header canonicalization wrongly: refused at startup.
    @Test func ed25519WithSimpleHeaderCanonicalizationIsRefused() throws {
        #expect(throws: (any Error).self) {
            try Self.signer([keyTable("ed", file: "ed.pem", algorithm: "ed25519-sha256")], ["canonicalization": .string("simple/simple")])
        }
    }

    @Test func keySplitIntoSeveralStringsVerifies() async throws {
        let signer = try Self.signer([keyTable("split", file: "rsa.pem")])
        let (_, _, sigs) = try await Self.verify(try Self.verifier(), signatures: try await Self.sign(signer))
        #expect(sigs.map(\.result) == ["pass"])
    }

    @Test func chunkingDoesNotMatter() async throws {
        let body = Array((0..<5000).map { "line \($0) \t with  spaces \r\n" }.joined().utf8)
        let signer = try Self.signer([keyTable("rsa", file: "rsa.pem"), keyTable("ed", file: "ed.pem", algorithm: "ed25519-sha256")])
        let signatures = try await Self.sign(signer, body: body, chunk: 4093)
        #expect(signatures.count == 2)
        #expect(Set(signatures.map { Self.tags($0)["a"] }) == ["rsa-sha256", "ed25519-sha256"])
        for size in [1, 3, 65536, body.count] {
            let (_, _, sigs) = try await Self.verify(try Self.verifier(), signatures: signatures, body: body, chunk: size)
            #expect(sigs.map(\.result) == ["pass", "pass"], "chunks of \(size)")
        }
    }

    @Test func tamperedBodyFails() async throws {
        let signatures = try await Self.sign(try Self.signer())
        var body = dkimBody
        body[0] = UInt8(ascii: "J")
        let (decision, results, sigs) = try await Self.verify(try Self.verifier(), signatures: signatures, body: body)
        #expect(sigs.map(\.result) == ["fail"])
        #expect(results.first?.reason != nil)
        #expect(decision.verdict == .continue, "fail is tagged by default")
    }

    @Test func tamperedHeaderFailsAndRejectsWhenConfigured() async throws {
        let signatures = try await Self.sign(try Self.signer())
        var headers = dkimHeaders
        headers[2] = HeaderField(name: "Subject", value: " another subject")
        let (decision, _, sigs) = try await Self.verify(try Self.verifier(["fail": .string("reject")]), signatures: signatures, headers: headers)
        #expect(sigs.map(\.result) == ["fail"])
        #expect(decision.verdict == .reject(550, "5.7.20", "No passing DKIM signature found"))
        let (d2, _, _) = try await Self.verify(try Self.verifier(["fail": .string("tempfail")]), signatures: signatures, headers: headers)
        guard case .tempfail(let reply) = d2.verdict else { Issue.record("\(d2.verdict)"); return }
        #expect(reply.code == 451)
    }

    @Test func addedFromBreaksTheOversignedSignature() async throws {
        let signatures = try await Self.sign(try Self.signer())
        let headers = dkimHeaders + [HeaderField(name: "From", value: " Mallory <mallory@example.org>")]
        let (_, _, sigs) = try await Self.verify(try Self.verifier(), signatures: signatures, headers: headers)
        #expect(sigs.map(\.result) == ["fail"])
    }

    @Test func unsignedIsNone() async throws {
        let (decision, results, sigs) = try await Self.verify(try Self.verifier(["fail": .string("reject")]), signatures: [])
        #expect(sigs.isEmpty)
        #expect(results.map(\.resinfo) == ["dkim=none"])
        #expect(decision.verdict == .continue)
    }

    @Test func missingAndRevokedKeysArePermerror() async throws {
        let rsa = try Self.signer([keyTable("rsa", file: "rsa.pem"), keyTable("missing", file: "rsa.pem"), keyTable("revoked", file: "rsa.pem")])
        let signatures = try await Self.sign(rsa)
        let (decision, _, sigs) = try await Self.verify(try Self.verifier(["fail": .string("reject")]), signatures: signatures)
        #expect(Dictionary(uniqueKeysWithValues: sigs.map { ($0.selector, $0.result) }) == ["rsa": "pass", "missing": "permerror", "revoked": "permerror"])
        #expect(decision.verdict == .continue)
    }

    @Test func decodedKeysAreKeptAndStillCheckEverySignature() async throws {
        let signatures = try await Self.sign(try Self.signer())
        let verifier = try Self.verifier()
        _ = try await Self.verify(verifier, signatures: signatures)  // the key is decoded (or was already)
        let hits = sluice_dkim_key_cache_hits()
        for _ in 0..<3 {
            let (_, _, sigs) = try await Self.verify(verifier, signatures: signatures)
            #expect(sigs.map(\.result) == ["pass"])
        }
        #expect(sluice_dkim_key_cache_hits() >= hits + 3, "libopendkim did not get the kept key: is d2i_PUBKEY_bio exported?")
        // A kept key verifies nothing it did not sign.
        var tampered = dkimBody
        tampered[0] ^= 0x01
        let (_, _, sigs) = try await Self.verify(verifier, signatures: signatures, body: tampered)
        #expect(sigs.map(\.result) == ["fail"])
    }

    @Test func wrongKeyFails() async throws {
        // "wrong" publishes the Ed25519 key for an RSA signature
        let signatures = try await Self.sign(try Self.signer([keyTable("wrong", file: "rsa.pem")]))
        let (_, _, sigs) = try await Self.verify(try Self.verifier(), signatures: signatures)
        #expect(sigs.count == 1)
        #expect(sigs.first?.result != "pass")
    }

    @Test func keyLookupTimeoutIsTemperror() async throws {
        let signatures = try await Self.sign(try Self.signer([keyTable("slow", file: "rsa.pem")]))
        let (decision, _, sigs) = try await Self.verify(try Self.verifier(["temperror": .string("tempfail")]), signatures: signatures)
        #expect(sigs.map(\.result) == ["temperror"])
        #expect(decision.verdict == .tempfail(451, "4.7.20", "DKIM key lookup failed, try again later"))
    }

    @Test func signOnlyTrustedByDefault() async throws {
        let stage = try Self.signer()
        #expect(try await Self.sign(stage, trusted: false).isEmpty)
        #expect(try await Self.sign(stage, trusted: true).count == 1)
        let all = try Self.signer([keyTable("rsa", file: "rsa.pem")], ["sign": .string("all")])
        #expect(try await Self.sign(all, trusted: false).count == 1)
    }

    @Test func fromDomainSelectsTheKeys() async throws {
        let stage = try Self.signer([keyTable("rsa", file: "rsa.pem"), keyTable("net", file: "ed.pem", algorithm: "ed25519-sha256", domain: "example.net")])
        var headers = dkimHeaders
        headers[0] = HeaderField(name: "From", value: " \"Bob, at example.org\" <bob@EXAMPLE.net>")
        let signatures = try await Self.sign(stage, headers: headers)
        #expect(signatures.map { Self.tags($0)["d"] } == ["example.net"])
        headers[0] = HeaderField(name: "From", value: " carol@mail.example.org")
        #expect(try await Self.sign(stage, headers: headers).isEmpty)
        let sub = try Self.signer([keyTable("rsa", file: "rsa.pem")], ["subdomains": .bool(true)])
        let subSignatures = try await Self.sign(sub, headers: headers)
        #expect(subSignatures.map { Self.tags($0)["d"] } == ["example.org"])
        let (_, _, sigs) = try await Self.verify(try Self.verifier(), signatures: subSignatures, headers: headers)
        #expect(sigs.map(\.result) == ["pass"])
    }

    @Test func expireAndHeaderOptions() async throws {
        let stage = try Self.signer([keyTable("rsa", file: "rsa.pem")], [
            "expire_s": .int(600), "headers": strings("From", "Subject"), "oversign": strings("From", "Subject"),
        ])
        let t = Self.tags(try await Self.sign(stage)[0])
        #expect(Int(t["x"]!)! - Int(t["t"]!)! == 600)
        #expect(t["h"]!.lowercased().split(separator: ":").sorted() == ["from", "from", "subject", "subject"])
    }

    @Test func badConfigurations() throws {
        #expect(throws: ConfigError.self) { try Self.signer([]) }
        #expect(throws: ConfigError.self) { try Self.signer([keyTable("x", file: "missing.pem")]) }
        #expect(throws: ConfigError.self) { try Self.signer([keyTable("x", file: "notakey.pem")]) }
        #expect(throws: ConfigError.self) { try Self.signer([keyTable("x", file: "rsa.pem", algorithm: "rsa-sha1")]) }
        #expect(throws: ConfigError.self) { try Self.signer([keyTable("rsa", file: "rsa.pem")], ["canonicalization": .string("loose/simple")]) }
        #expect(throws: ConfigError.self) { try Self.signer([keyTable("rsa", file: "rsa.pem")], ["headers": strings("Subject")]) }
        #expect(throws: ConfigError.self) { try Self.signer([keyTable("rsa", file: "rsa.pem")], ["sign": .string("some")]) }
        #expect(throws: ConfigError.self) { try Self.verifier(["fail": .string("discard")]) }
        #expect(throws: ConfigError.self) { try Self.verifier(["temperror": .string("reject")]) }
        #expect(throws: (any Error).self) { try Self.signer([keyTable("ed", file: "ed.pem", algorithm: "rsa-sha256")]) }
    }

    @Test func fromDomainParsing() {
        #expect(DKIMSignStage.fromDomain("alice@example.org") == "example.org")
        #expect(DKIMSignStage.fromDomain("Alice <alice@example.org>") == "example.org")
        #expect(DKIMSignStage.fromDomain("\"a@b\" <alice@example.org>") == "example.org")
        #expect(DKIMSignStage.fromDomain("no address") == nil)
    }
}

@Suite("DMARC")
struct DMARCTests {
    @Test(arguments: [
        ("alice@example.org", ["example.org"]),
        ("<alice@example.org>", ["example.org"]),
        ("Alice <alice@example.org>", ["example.org"]),
        ("\"Doe, John\" <john@example.org>", ["example.org"]),
        ("\"x@evil.test\" <alice@example.org>", ["example.org"]),
        ("a@example.org, \"B\" <b@example.net>", ["example.org", "example.net"]),
        ("alice@example.org (sent for bob@evil.test, really)", ["example.org"]),
        ("(c@evil.test) Alice <alice@example.org>", ["example.org"]),
        ("alice@example.org (a (nested b@evil.test) c)", ["example.org"]),
        ("Alice <alice@example.org> (Alice, at work)", ["example.org"]),
        ("alice", []),
        ("", []),
    ])
    func domainsInFrom(value: String, expected: [String]) {
        #expect(DMARCStage.domains(in: value) == expected)
    }

    @Test func domainsInGroups() {
        #expect(DMARCStage.domains(in: "undisclosed-recipients:;") == [])
        #expect(DMARCStage.domains(in: "Team: a@example.org, b@example.net;") == ["example.org", "example.net"])
    }

    @Test func escapedQuoteInADisplayName() {
        #expect(DMARCStage.domains(in: "\"a\\\", b@evil.test\" <alice@example.org>") == ["example.org"])
        // a quote inside a comment is an ordinary character (RFC 5322 ctext)
        #expect(DMARCStage.domains(in: "(he said \") alice@example.org") == ["example.org"])
    }

    static func stage(_ values: [String: ConfigValue] = [:]) throws -> DMARCStage {
        let config = table(values)
        let stage = try DMARCStage(config: config, environment: DKIMFixtures.environment())
        try config.finish()
        return stage
    }

    /// Evaluates a message with `from` and the given SPF and DKIM results.
    static func run(_ stage: DMARCStage, from: [String], spf: (String, String)? = nil, helo: (String, String)? = nil,
                    dkim: [(String, String)] = []) async throws -> (StageVerdict, [String]) {
        let t = transaction(.mailbox(mb("x@example.test")))
        if let (result, mailfrom) = spf {
            t.results.record(AuthenticationResult(method: "spf", result: result, properties: [.init("smtp.mailfrom", mailfrom)]))
        }
        if let (result, name) = helo {
            t.results.record(AuthenticationResult(method: "spf", result: result, properties: [.init("smtp.helo", name)]))
        }
        if !dkim.isEmpty {
            t.state[DKIMVerifyStage.resultsKey] = dkim.map {
                DKIMVerifyStage.SignatureResult(domain: $0.0, selector: "s", algorithm: "rsa-sha256", result: $0.1, reason: nil, signaturePrefix: "")
            }
        }
        let headers = from.map { HeaderField(name: "From", value: " " + $0) } + [HeaderField(name: "Subject", value: " x")]
        let view = MessageView(headers: headers, body: MessageBody(bytes: Array("x\r\n".utf8)), receivedSize: 3)
        let decision = try await stage.endOfMessage(view, session: session(client: "192.0.2.1"), transaction: t)
        #expect(decision.edits.isEmpty)
        return (decision.verdict, t.results.all.filter { $0.method == "dmarc" }.map(\.resinfo))
    }

    @Test func failingRejects() async throws {
        let (v, r) = try await Self.run(try Self.stage(), from: ["<a@strict.example.net>"], spf: ("fail", "a@strict.example.net"))
        #expect(v == .reject(550, "5.7.1", "Message rejected by the DMARC policy of strict.example.net"))
        #expect(r == ["dmarc=fail (p=reject dis=REJECT) header.from=strict.example.net"])
    }

    @Test func alignedDKIMPasses() async throws {
        let (v, r) = try await Self.run(try Self.stage(), from: ["<a@strict.example.net>"], spf: ("fail", "a@strict.example.net"),
                                        dkim: [("strict.example.net", "pass")])
        #expect(v == .continue)
        #expect(r == ["dmarc=pass (p=reject dis=NONE) header.from=strict.example.net"])
    }

    @Test func strictAlignment() async throws {
        let stage = try Self.stage()
        let (v1, _) = try await Self.run(stage, from: ["<a@strict.example.net>"], spf: ("pass", "b@mail.strict.example.net"))
        #expect(v1 != .continue, "aspf=s: a subdomain does not align")
        let (v2, _) = try await Self.run(stage, from: ["<a@strict.example.net>"], dkim: [("example.net", "pass")])
        #expect(v2 != .continue, "adkim=s: the parent does not align")
        let (v3, _) = try await Self.run(stage, from: ["<a@strict.example.net>"], spf: ("pass", "b@strict.example.net"))
        #expect(v3 == .continue)
    }

    @Test func relaxedSPFAlignment() async throws {
        let (v, r) = try await Self.run(try Self.stage(), from: ["<a@q.example.net>"], spf: ("pass", "bounce@bounces.example.net"))
        #expect(v == .continue)
        #expect(r.first?.hasPrefix("dmarc=pass") == true, "\(r)")
    }

    @Test func heloIdentityForTheNullSender() async throws {
        let (v, r) = try await Self.run(try Self.stage(), from: ["<a@q.example.net>"], helo: ("pass", "mx.q.example.net"))
        #expect(v == .continue)
        #expect(r.first?.hasPrefix("dmarc=pass") == true, "\(r)")
    }

    @Test func quarantineAndNone() async throws {
        let stage = try Self.stage()
        let (v1, _) = try await Self.run(stage, from: ["<a@q.example.net>"], spf: ("fail", "a@q.example.net"))
        guard case .quarantine = v1 else { Issue.record("\(v1)"); return }
        let (v2, r2) = try await Self.run(stage, from: ["<a@none.example.net>"], spf: ("fail", "a@none.example.net"))
        #expect(v2 == .continue)
        #expect(r2 == ["dmarc=fail (p=none dis=NONE) header.from=none.example.net"])
    }

    @Test func noRecordIsNone() async throws {
        let (v, r) = try await Self.run(try Self.stage(), from: ["<a@example.net>"], spf: ("fail", "a@example.net"))
        #expect(v == .continue)
        #expect(r == ["dmarc=none header.from=example.net"])
    }

    @Test func subdomainUsesTheOrganizationalSP() async throws {
        // _dmarc.example.com: p=quarantine; sp=reject; mail.example.com has no record
        let (v, r) = try await Self.run(try Self.stage(), from: ["<a@mail.example.com>"], spf: ("fail", "a@mail.example.com"))
        #expect(v == .reject(550, "5.7.1", "Message rejected by the DMARC policy of mail.example.com"))
        #expect(r == ["dmarc=fail (p=reject dis=REJECT) header.from=mail.example.com"])
    }

    @Test func theDomainsOwnRecordUsesP() async throws {
        // _dmarc.example.com: p=quarantine; sp=reject -- example.com itself is quarantined, not rejected
        let (v, _) = try await Self.run(try Self.stage(), from: ["<a@example.com>"], spf: ("fail", "a@example.com"))
        guard case .quarantine = v else { Issue.record("expected quarantine, got \(v)"); return }
    }

    @Test func overrides() async throws {
        let tag = try Self.stage(["reject": .string("tag")])
        #expect(try await Self.run(tag, from: ["<a@strict.example.net>"], spf: ("fail", "a@strict.example.net")).0 == .continue)
        let q = try Self.stage(["reject": .string("quarantine")])
        guard case .quarantine = try await Self.run(q, from: ["<a@strict.example.net>"]).0 else { Issue.record("quarantine expected"); return }
        let qr = try Self.stage(["quarantine": .string("reject")])
        guard case .reject = try await Self.run(qr, from: ["<a@q.example.net>"]).0 else { Issue.record("reject expected"); return }
        let qt = try Self.stage(["quarantine": .string("tag")])
        #expect(try await Self.run(qt, from: ["<a@q.example.net>"]).0 == .continue)
    }

    @Test func temperror() async throws {
        let (v, r) = try await Self.run(try Self.stage(), from: ["<a@slow.example.net>"])
        #expect(v == .continue)
        #expect(r == ["dmarc=temperror header.from=slow.example.net"])
        let (v2, _) = try await Self.run(try Self.stage(["temperror": .string("tempfail")]), from: ["<a@slow.example.net>"])
        guard case .tempfail(let reply) = v2 else { Issue.record("\(v2)"); return }
        #expect(reply.code == 451)
        #expect(reply.enhancedCode.map { "\($0)" } == "4.7.1")
    }

    @Test func badRecordIsPermerror() async throws {
        let (v, r) = try await Self.run(try Self.stage(), from: ["<a@bad.example.net>"])
        #expect(v == .continue)
        #expect(r.first?.hasPrefix("dmarc=permerror") == true, "\(r)")
    }

    @Test func severalAuthorsArePermerror() async throws {
        let stage = try Self.stage()
        for from in [["<a@example.org>, <b@example.net>"], ["<a@example.org>", "<b@example.org>"], ["nobody"]] {
            let (v, r) = try await Self.run(stage, from: from)
            #expect(v == .continue)
            #expect(r.first?.hasPrefix("dmarc=permerror") == true, "\(from): \(r)")
        }
        // two addresses of one domain are one author domain
        let (v, _) = try await Self.run(stage, from: ["<a@strict.example.net>, <b@strict.example.net>"])
        #expect(v != .continue)
    }

    @Test func pctZeroNeverRejects() async throws {
        var z = DKIMFixtures.zone
        z.addText("_dmarc.pct.example.net", "v=DMARC1; p=reject; pct=0")
        let config = table([:])
        let stage = try DMARCStage(config: config, environment: DKIMFixtures.environment(z))
        for _ in 0..<20 {
            let (v, _) = try await Self.run(stage, from: ["<a@pct.example.net>"])
            guard case .quarantine = v else { Issue.record("pct=0 must quarantine at most, got \(v)"); return }
        }
        let strict = try DMARCStage(config: table(["honor_pct": .bool(false)]), environment: DKIMFixtures.environment(z))
        guard case .reject = try await Self.run(strict, from: ["<a@pct.example.net>"]).0 else { Issue.record("honor_pct=false rejects"); return }
    }

    @Test func organizationalDomains() throws {
        _ = try Self.stage()   // loads the public suffix list
        #expect(DMARCLibrary.organizationalDomain("a.b.example.org") == "example.org")
        #expect(DMARCLibrary.organizationalDomain("example.org") == "example.org")
        #expect(DMARCLibrary.organizationalDomain("mail.example.co.uk") == "example.co.uk")
    }
}
