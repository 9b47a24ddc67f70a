import SMTPCore
import SluiceStageAPI
@testable import SluiceStages
import Testing

/// Every DKIM-Signature field becomes one result (RFC 8601 2.7.1): a signature libopendkim
/// drops while parsing is `permerror` (RFC 6376 6.1.1 PERMFAIL), not an unsigned message.
@Suite("DKIM results for unusable signatures")
struct DKIMSignatureResultTests {
    /// A valid signature of the fixture message, to be spoiled by each case.
    static func validSignature() async throws -> String {
        try await DKIMTests.sign(try DKIMTests.signer())[0]
    }

    static func spoil(_ value: String, _ pattern: String, _ replacement: String) -> String {
        guard let range = value.range(of: pattern, options: .regularExpression) else {
            Issue.record("no \(pattern) in \(value)")
            return value
        }
        return value.replacingCharacters(in: range, with: replacement)
    }

    static func verify(_ value: String, headers: [HeaderField] = dkimHeaders, body: [UInt8] = dkimBody) async throws
        -> ([AuthenticationResult], [DKIMVerifyStage.SignatureResult]) {
        let (decision, results, sigs) = try await DKIMTests.verify(try DKIMTests.verifier(), signatures: [value], headers: headers, body: body)
        #expect(decision.verdict == .continue)
        return (results, sigs)
    }

    @Test(arguments: [
        ("v=1;\\s*", "", "no v= tag"),
        ("v=1;", "v=2;", "unsupported version v=2"),
        ("a=rsa-sha256", "a=rsa-md5", "unsupported algorithm a=rsa-md5"),
        ("a=rsa-sha256", "a=dsa-sha1", "unsupported algorithm a=dsa-sha1"),
        ("bh=[^;]*;\\s*", "", "required tag bh= missing"),
        ("s=rsa;", "s=rsa; i=@elsewhere.example;", "i= domain is not within d="),
        ("v=1;", "v=1; q=http/well-known;", "unsupported query method q=http/well-known"),
        ("c=relaxed/relaxed", "c=fancy/relaxed", "unknown canonicalization c=fancy/relaxed"),
        ("v=1;", "v=1; l=ten;", "malformed l= value"),
        ("v=1;", "v=1; v=1;", "malformed tag-list"),
        ("v=1;", "v=1; =x;", "malformed tag-list"),
        ("v=1;", "v=1; 9a=x;", "malformed tag-list"),
    ])
    func unusableSignaturesArePermerror(_ pattern: String, _ replacement: String, _ reason: String) async throws {
        let value = Self.spoil(try await Self.validSignature(), pattern, replacement)
        let (results, sigs) = try await Self.verify(value)
        #expect(sigs.count == 1, "one result per DKIM-Signature field")
        #expect(sigs.first?.result == "permerror")
        #expect(sigs.first?.reason == reason)
        #expect(results.count == 1)
        #expect(results.first?.result == "permerror")
        if reason != "malformed tag-list" {
            #expect(sigs.first?.domain == "example.org")
            #expect(sigs.first?.selector == "rsa")
            let resinfo = results.first?.resinfo ?? ""
            #expect(resinfo.contains("header.d=example.org") && resinfo.contains("header.s=rsa"), "\(resinfo)")
        }
    }

    @Test(arguments: ["rsa-md5", "dsa-sha1", "hmac-sha256"])
    func headerAIsTheSignaturesOwnAlgorithm(_ algorithm: String) async throws {
        let value = Self.spoil(try await Self.validSignature(), "a=rsa-sha256", "a=\(algorithm)")
        let (results, sigs) = try await Self.verify(value)
        #expect(sigs.first?.algorithm == algorithm)
        #expect(results.first?.resinfo.contains("header.a=\(algorithm)") == true, "\(results.first?.resinfo ?? "")")
    }

    @Test func identityOutsideTheDomainKeepsItsAlgorithm() async throws {
        let value = Self.spoil(try await Self.validSignature(), "s=rsa;", "s=rsa; i=@other.example;")
        let (results, _) = try await Self.verify(value)
        #expect(results.first?.resinfo.contains("header.a=rsa-sha256") == true, "\(results.first?.resinfo ?? "")")
    }

    @Test func aSignedMessageWithoutFromIsPermerror() async throws {
        let value = try await Self.validSignature()
        let (results, sigs) = try await Self.verify(value, headers: dkimHeaders.filter { $0.name != "From" })
        #expect(sigs.map(\.result) == ["permerror"])
        #expect(sigs.first?.reason == "the message has no From field")
        #expect(results.map(\.result) == ["permerror"])
    }

    @Test func aGoodAndABadSignatureGiveTwoResultsInOrder() async throws {
        let signer = try DKIMTests.signer([keyTable("rsa", file: "rsa.pem"), keyTable("ed", file: "ed.pem", algorithm: "ed25519-sha256")])
        let signatures = try await DKIMTests.sign(signer)
        let rsa = try #require(signatures.first { $0.contains("a=rsa-sha256") })
        let ed = try #require(signatures.first { $0.contains("a=ed25519-sha256") })
        let bad = Self.spoil(ed, "v=1;", "v=2;")
        let (_, results, sigs) = try await DKIMTests.verify(try DKIMTests.verifier(), signatures: [bad, rsa])
        #expect(sigs.map(\.result) == ["permerror", "pass"])
        #expect(sigs.map(\.selector) == ["ed", "rsa"])
        #expect(results.map(\.result) == ["permerror", "pass"])
    }

    @Test func onlyAMessageWithoutSignaturesIsNone() async throws {
        let (_, results, sigs) = try await DKIMTests.verify(try DKIMTests.verifier(), signatures: [])
        #expect(sigs.isEmpty)
        #expect(results.map(\.resinfo) == ["dkim=none"])
    }

    /// RFC 6376 3.4.3/3.4.4: the empty body has a hash of its own; a message that ends with its
    /// header section verifies like any other.
    @Test(arguments: ["relaxed/relaxed", "simple/simple"])
    func aMessageWithNoBodyVerifies(_ canonicalization: String) async throws {
        let signer = try DKIMTests.signer([keyTable("rsa", file: "rsa.pem")], ["canonicalization": .string(canonicalization)])
        let value = try await DKIMTests.sign(signer, body: [])[0]
        let (results, sigs) = try await Self.verify(value, body: [])
        #expect(sigs.map(\.result) == ["pass"])
        #expect(results.first?.resinfo.hasPrefix("dkim=pass header.d=example.org") == true)
    }

    @Test func tagListGrammar() {
        #expect(DKIMSignatureField.tagList(" v=1; a = rsa-sha256 ;\r\n\tb=ab\r\n\t cd; ") == ["v": "1", "a": "rsa-sha256", "b": "abcd"])
        #expect(DKIMSignatureField.tagList("v=1;;a=x") == nil)
        #expect(DKIMSignatureField.tagList("v=1; a=x;y") == nil)
        #expect(DKIMSignatureField.tagList("v=1; a=\u{7F}") == nil)
        #expect(DKIMSignatureField.tagList("") == [:])
        #expect(DKIMSignatureField.tagList("v=1; i=jos\u{E9}@example.org") == ["v": "1", "i": "jos\u{E9}@example.org"])
    }
}
