import Testing
import SMTPCore

/// `HeaderAddress.parseList`: the one RFC 5322 address parser (dmarc's From domains, dkim-sign's
/// signing domain), one row per form.
@Suite("HeaderAddress")
struct HeaderAddressTests {
    static let rows: [(String, [String])] = [
        ("alice@example.org", ["alice@example.org"]),
        ("Alice <alice@example.org>", ["alice@example.org"]),
        ("\"Alice Liddell\" <alice@example.org>", ["alice@example.org"]),
        ("\"a@b\" <alice@example.org>", ["alice@example.org"]),
        ("\"quoted \\\" pair, comma\" <alice@example.org>", ["alice@example.org"]),
        ("alice@example.org (Alice, in a comment <bob@evil.test>)", ["alice@example.org"]),
        ("(nested (comment) @evil.test) alice@example.org", ["alice@example.org"]),
        ("Alice <alice@example.org>, bob@example.net", ["alice@example.org", "bob@example.net"]),
        ("friends: alice@example.org, Bob <bob@example.net>;, carol@example.com", ["alice@example.org", "bob@example.net", "carol@example.com"]),
        ("undisclosed-recipients:;", []),
        ("<@relay.test,@other.test:alice@example.org>", ["alice@example.org"]),
        ("\"odd local\"@example.org", ["odd local@example.org"]),
        ("john.q.public @ example . org", ["john.q.public@example.org"]),
        ("user@[192.0.2.1]", ["user@[192.0.2.1]"]),
        ("Alice\r\n <alice@example.org>", ["alice@example.org"]),
        ("jörg@bücher.test", ["jörg@bücher.test"]),
        ("no address here", []),
        ("user@", []),
        ("@example.org", []),
        ("", []),
        ("<>", []),
        ("Alice <alice@example.org", ["alice@example.org"]),
    ]

    @Test(arguments: rows.indices)
    func parses(_ i: Int) {
        let (value, expected) = Self.rows[i]
        #expect(HeaderAddress.parseList(value).map(\.description) == expected, "\(value)")
    }

    @Test func keepsDisplayNameAndGroup() {
        let list = HeaderAddress.parseList("Team \"A\": \"Alice L.\" <alice@example.org>, bob@example.net; carol@example.com")
        #expect(list == [
            HeaderAddress(displayName: "Alice L.", localPart: "alice", domain: "example.org", group: "Team A"),
            HeaderAddress(localPart: "bob", domain: "example.net", group: "Team A"),
            HeaderAddress(localPart: "carol", domain: "example.com"),
        ])
    }
}
