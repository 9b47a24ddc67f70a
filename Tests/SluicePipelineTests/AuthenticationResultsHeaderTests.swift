import SMTPCore
@testable import SluicePipeline
import SluiceStageAPI
import Testing

/// The gateway's Authentication-Results field (RFC 8601) and the removal of forged ones (section 5).
@Suite("AuthenticationResultsHeader")
struct AuthenticationResultsHeaderTests {
    @Test(arguments: [
        ("mx.example.test 1; spf=pass", "mx.example.test"),
        ("mx.example.test; spf=pass smtp.mailfrom=a@b.test", "mx.example.test"),
        ("mx.example.test;spf=pass", "mx.example.test"),
        ("mx.example.test", "mx.example.test"),
        ("(comment) mx.example.test; none", "mx.example.test"),
        (" \t(comment)\t(another) mx.example.test 1 ; none", "mx.example.test"),
        ("(nested (comment) here) mx.example.test; none", "mx.example.test"),
        ("mx.example.test(comment); none", "mx.example.test"),
        ("mx.example.test\t1;none", "mx.example.test"),
        ("  mx.example.test  ;  none", "mx.example.test"),
        ("other.example.net; spf=pass", "other.example.net"),
        ("; none", ""),
        ("", ""),
        ("(unterminated comment mx.example.test; none", ""),
    ])
    func authservID(_ value: String, _ expected: String) {
        #expect(AuthenticationResultsHeader.authservID(of: value) == expected)
    }

    static func draft(_ fields: [(String, String)]) -> MessageDraft {
        MessageDraft(
            headers: fields.map { HeaderField(name: $0.0, value: $0.1) },
            sender: .mailbox(Mailbox(localPart: "s", domain: "client.test")),
            recipients: []
        )
    }

    static func apply(_ edits: [MessageEdit], to fields: [(String, String)]) -> [String] {
        var d = draft(fields)
        for edit in edits { d.apply(edit) }
        return d.headers.map(\.description)
    }

    @Test func removesEveryFieldWithOurAuthservID() {
        let fields = [
            ("Received", " from a"),
            ("Authentication-Results", " mx.example.test; spf=pass smtp.mailfrom=forged@example.test"),
            ("Subject", " hi"),
            ("Authentication-Results", " other.example.net; dkim=pass"),
            ("authentication-results", " (forged)\r\n\tMX.Example.Test 1;\r\n\tdkim=pass"),
            ("Authentication-Results", " mx.example.test.other; none"),
        ]
        let edits = AuthenticationResultsHeader.removeSpoofed(from: fields.map { HeaderField(name: $0.0, value: $0.1) },
                                                              hostname: "mx.example.test")
        #expect(edits == [
            .deleteHeader(name: "Authentication-Results", occurrence: 1),
            .deleteHeader(name: "Authentication-Results", occurrence: 2),
        ])
        #expect(Self.apply(edits, to: fields) == [
            "Received: from a",
            "Subject: hi",
            "Authentication-Results: other.example.net; dkim=pass",
            "Authentication-Results: mx.example.test.other; none",
        ])
    }

    @Test func removesConsecutiveFields() {
        let fields = [
            ("Authentication-Results", " mx.example.test; a=b"),
            ("Authentication-Results", " mx.example.test; c=d"),
            ("Authentication-Results", " other.test; e=f"),
            ("Authentication-Results", " mx.example.test; g=h"),
            ("Authentication-Results", " mx.example.test; i=j"),
            ("Subject", " x"),
        ]
        let edits = AuthenticationResultsHeader.removeSpoofed(from: fields.map { HeaderField(name: $0.0, value: $0.1) },
                                                              hostname: "MX.EXAMPLE.TEST")
        #expect(edits.count == 4)
        #expect(Self.apply(edits, to: fields) == ["Authentication-Results: other.test; e=f", "Subject: x"])
    }

    @Test func nothingToRemove() {
        let fields = [HeaderField(name: "Authentication-Results", value: " other.test; none"),
                      HeaderField(name: "X-Authentication-Results", value: " mx.example.test; none")]
        #expect(AuthenticationResultsHeader.removeSpoofed(from: fields, hostname: "mx.example.test").isEmpty)
        #expect(AuthenticationResultsHeader.removeSpoofed(from: [], hostname: "mx.example.test").isEmpty)
    }

    @Test func value() throws {
        let results = [
            AuthenticationResult(method: "spf", result: "pass", properties: [.init("smtp.mailfrom", "user@example.org")]),
            AuthenticationResult(method: "dkim", result: "fail", reason: "bad signature",
                                 properties: [.init("header.d", "example.org"), .init("header.s", "sel")]),
        ]
        let value = try #require(AuthenticationResultsHeader.value(hostname: "mx.example.test", results: results))
        #expect(value == " mx.example.test;\r\n\tspf=pass smtp.mailfrom=user@example.org;\r\n\tdkim=fail (bad signature) header.d=example.org header.s=sel")
        // As inserted: the authserv-id reads back as ours, so a second pass would remove it.
        let field = HeaderField.make(name: AuthenticationResultsHeader.name, value: value)
        #expect(field.unfoldedValue == "mx.example.test;\tspf=pass smtp.mailfrom=user@example.org;\tdkim=fail (bad signature) header.d=example.org header.s=sel")
        #expect(AuthenticationResultsHeader.authservID(of: field.unfoldedValue) == "mx.example.test")
        #expect(AuthenticationResultsHeader.removeSpoofed(from: [field], hostname: "mx.example.test").count == 1)
        #expect(AuthenticationResultsHeader.name == "Authentication-Results")
    }

    @Test func valueOfOneResult() {
        let one = [AuthenticationResult(method: "spf", result: "none", properties: [.init("smtp.helo", "h.test")])]
        #expect(AuthenticationResultsHeader.value(hostname: "mx.test", results: one) == " mx.test;\r\n\tspf=none smtp.helo=h.test")
    }

    @Test func noResultsNoField() {
        #expect(AuthenticationResultsHeader.value(hostname: "mx.example.test", results: []) == nil)
    }
}

/// Forged fields whose authserv-id is ours in a form `authservID` does not read (RFC 8601 2.2:
/// authserv-id is a `value`, token or quoted-string, after CFWS whose comments may hold quoted-pairs).
@Suite("AuthenticationResultsHeader quoted and commented authserv-ids")
struct AuthenticationResultsHeaderKnownGapTests {
    @Test(arguments: [
        "\"mx.example.test\"; dkim=pass header.d=bank.example",
        "(\\() mx.example.test; dkim=pass header.d=bank.example",
        "(a \\) b) mx.example.test; dkim=pass header.d=bank.example",
    ])
    func forgedFieldIsRemoved(_ value: String) {
        let fields = [HeaderField(name: "Authentication-Results", value: " " + value)]
        #expect(AuthenticationResultsHeader.removeSpoofed(from: fields, hostname: "mx.example.test").count == 1)
    }
}
