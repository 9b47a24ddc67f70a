import SluiceStageAPI
@testable import SluiceStages
import Testing

/// A domain-spec as the parser makes it.
private func spec(_ text: String) -> SPFMacroString { try! SPFMacroString(text) }
private func ip(_ text: String) -> IPAddress { IPAddress(text)! }

/// One row of the SPF record table, in the manner of swift-nio-imap's parser fixtures: a record
/// and what `SPFRecord` must make of it.
struct SPFRecordFixture: Sendable, CustomTestStringConvertible {
    typealias Q = SPFRecord.Qualifier
    typealias M = SPFRecord.Mechanism

    enum Expectation: Sendable {
        /// Parses; when `terms` is given the directives must be exactly these.
        case parses(terms: [Term]?, redirect: String?, exp: String?, unknown: [String])
        /// Fails; the message contains `fragment` when given.
        case fails(fragment: String?)
    }

    struct Term: Sendable, Equatable {
        var qualifier: Q
        var mechanism: M
    }

    var text: String
    var expectation: Expectation
    var sourceLocation: SourceLocation

    static func ok(
        _ text: String, _ terms: [(Q, M)]? = nil, redirect: String? = nil, exp: String? = nil, unknown: [String] = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Self {
        Self(text: text, expectation: .parses(terms: terms?.map { Term(qualifier: $0.0, mechanism: $0.1) },
                                              redirect: redirect, exp: exp, unknown: unknown),
             sourceLocation: sourceLocation)
    }

    static func fail(_ text: String, _ fragment: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) -> Self {
        Self(text: text, expectation: .fails(fragment: fragment), sourceLocation: sourceLocation)
    }

    var testDescription: String {
        var s = ""
        for u in text.unicodeScalars {
            if u.value < 0x20 || u.value >= 0x7F { s += "\\u{\(String(u.value, radix: 16))}" } else { s.unicodeScalars.append(u) }
        }
        return s
    }
}

@Suite("SPFRecord")
struct SPFRecordTests {
    typealias F = SPFRecordFixture

    static let parsing: [F] = [
        .ok("v=spf1", []),
        .ok("v=spf1 ", []),
        .ok("v=spf1 -all", [(.fail, .all)]),
        .ok("V=SPF1 +ALL", [(.pass, .all)]),
        .ok("v=spf1 +all -all ~all ?all all", [(.pass, .all), (.fail, .all), (.softfail, .all), (.neutral, .all), (.pass, .all)]),
        .ok("v=spf1   a    mx  -all  ", [(.pass, .a(nil, v4: nil, v6: nil)), (.pass, .mx(nil, v4: nil, v6: nil)), (.fail, .all)]),
        .ok("v=spf1 A MX PTR -ALL"),
        // a and mx: domain, dual CIDR
        .ok("v=spf1 a:example.com", [(.pass, .a(spec("example.com"), v4: nil, v6: nil))]),
        .ok("v=spf1 a:example.com.", [(.pass, .a(spec("example.com."), v4: nil, v6: nil))]),
        .ok("v=spf1 a/24", [(.pass, .a(nil, v4: 24, v6: nil))]),
        .ok("v=spf1 a/0", [(.pass, .a(nil, v4: 0, v6: nil))]),
        .ok("v=spf1 a//64", [(.pass, .a(nil, v4: nil, v6: 64))]),
        .ok("v=spf1 a/32//128", [(.pass, .a(nil, v4: 32, v6: 128))]),
        .ok("v=spf1 ~a:example.com/24//64", [(.softfail, .a(spec("example.com"), v4: 24, v6: 64))]),
        .ok("v=spf1 mx/24//64", [(.pass, .mx(nil, v4: 24, v6: 64))]),
        .ok("v=spf1 -mx:mail.example.com//48", [(.fail, .mx(spec("mail.example.com"), v4: nil, v6: 48))]),
        .ok("v=spf1 a:foo:bar/baz.example.com", [(.pass, .a(spec("foo:bar/baz.example.com"), v4: nil, v6: nil))]),
        .ok("v=spf1 a:foo:bar/baz.example.com/24", [(.pass, .a(spec("foo:bar/baz.example.com"), v4: 24, v6: nil))]),
        .ok("v=spf1 mx:%{d}/24", [(.pass, .mx(spec("%{d}"), v4: 24, v6: nil))]),
        .ok("v=spf1 a:example.x-y a:example.x1 a:example.1x a:example.com-1"),
        // ip4, ip6
        .ok("v=spf1 ip4:192.0.2.0/24 -ip4:0.0.0.0/0 ip4:192.0.2.1 ?ip4:10.0.0.1/32", [
            (.pass, .ip4(ip("192.0.2.0"), prefix: 24)), (.fail, .ip4(ip("0.0.0.0"), prefix: 0)),
            (.pass, .ip4(ip("192.0.2.1"), prefix: nil)), (.neutral, .ip4(ip("10.0.0.1"), prefix: 32)),
        ]),
        .ok("v=spf1 ip6:2001:db8::/32 ip6:::1/128 ip6:::/0 ip6:2001:DB8::CB01", [
            (.pass, .ip6(ip("2001:db8::"), prefix: 32)), (.pass, .ip6(ip("::1"), prefix: 128)),
            (.pass, .ip6(ip("::"), prefix: 0)), (.pass, .ip6(ip("2001:db8::cb01"), prefix: nil)),
        ]),
        .ok("v=spf1 ip6:::ffff:1.2.3.4", [
            (.pass, .ip6(IPAddress(bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4])!, prefix: nil)),
        ]),
        .ok("v=spf1 ip6:::ffff:1.2.3.4/96", [
            (.pass, .ip6(IPAddress(bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4])!, prefix: 96)),
        ]),
        // include, exists, ptr
        .ok("v=spf1 include:_spf.example.com -include:%{d}", [
            (.pass, .include(spec("_spf.example.com"))), (.fail, .include(spec("%{d}"))),
        ]),
        .ok("v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d}", [(.pass, .exists(spec("%{ir}.%{l1r+-}._spf.%{d}")))]),
        .ok("v=spf1 ptr ?ptr:example.com", [(.pass, .ptr(nil)), (.neutral, .ptr(spec("example.com")))]),
        .ok("v=spf1 INCLUDE:Example.COM EXISTS:%{D}.example.com"),
        // modifiers
        .ok("v=spf1 redirect=_spf.example.com", [], redirect: "_spf.example.com"),
        .ok("v=spf1 -all exp=explain._spf.%{d}", [(.fail, .all)], exp: "explain._spf.%{d}"),
        .ok("v=spf1 REDIRECT=a.example.com EXP=b.example.com", [], redirect: "a.example.com", exp: "b.example.com"),
        .ok("v=spf1 redirect=%{d}", redirect: "%{d}"),
        .ok("v=spf1 foo=bar -all", [(.fail, .all)], unknown: ["foo=bar"]),
        .ok("v=spf1 moo.cow-far_out=man:dog/cat ip4:192.0.2.1 x-y_z=", [(.pass, .ip4(ip("192.0.2.1"), prefix: nil))],
            unknown: ["moo.cow-far_out=man:dog/cat", "x-y_z="]),
        .ok("v=spf1 foo=%{s}%%%_%- bar=a=b", unknown: ["foo=%{s}%%%_%-", "bar=a=b"]),
        // macro forms in domain-specs
        .ok("v=spf1 include:%{d2r}.example.com a:%{l-}.%{o}.%{h}.%{v}.%{p}.%{i}.example.com"),
        .ok("v=spf1 exists:%{S}%{L}%{O}%{D}%{I}%{P}%{H}%{V}.example.com"),
        .ok("v=spf1 exists:%{d1000}.example.com exists:%{dR}.example.com exists:%{d.-+,/_=}.example.com"),
    ]

    @Test(arguments: parsing)
    func parses(_ f: F) throws {
        let record: SPFRecord
        do {
            record = try SPFRecord(f.text)
        } catch {
            Issue.record("'\(f.text)' failed: \(error.message)", sourceLocation: f.sourceLocation)
            return
        }
        guard case .parses(let terms, let redirect, let exp, let unknown) = f.expectation else { return }
        if let terms {
            #expect(record.directives.map { F.Term(qualifier: $0.qualifier, mechanism: $0.mechanism) } == terms,
                    sourceLocation: f.sourceLocation)
        }
        #expect(record.redirect?.text == redirect, sourceLocation: f.sourceLocation)
        #expect(record.explanation?.text == exp, sourceLocation: f.sourceLocation)
        #expect(record.unknownModifiers == unknown, sourceLocation: f.sourceLocation)
    }

    static let failing: [F] = [
        // mechanisms
        .fail("v=spf1 foo", "unknown mechanism"),
        .fail("v=spf1 foo:example.com", "unknown mechanism"),
        .fail("v=spf1 -", "unknown mechanism"),
        .fail("v=spf1 +-all", "unknown mechanism"),
        .fail("v=spf1 ip", "unknown mechanism"),
        .fail("v=spf1 all:example.com"),
        .fail("v=spf1 all/24"),
        .fail("v=spf1 include", "needs a domain"),
        .fail("v=spf1 include:"),
        .fail("v=spf1 include/24"),
        .fail("v=spf1 exists", "needs a domain"),
        .fail("v=spf1 exists:"),
        .fail("v=spf1 ptr/24"),
        .fail("v=spf1 ptr:"),
        .fail("v=spf1 a:", "empty domain"),
        .fail("v=spf1 a:/24"),
        .fail("v=spf1 aexample.com", "unknown mechanism"),
        // ip4, ip6
        .fail("v=spf1 ip4:1.2.3.04", "IPv4"),
        .fail("v=spf1 ip4:1.2.3.4/33", "CIDR"),
        .fail("v=spf1 ip4:1.2.3.4/032", "CIDR"),
        .fail("v=spf1 ip4:1.2.3.4/", "CIDR"),
        .fail("v=spf1 ip4:1.2.3.4/-1", "CIDR"),
        .fail("v=spf1 ip4:1.2.3", "IPv4"),
        .fail("v=spf1 ip4:256.2.3.4", "IPv4"),
        .fail("v=spf1 ip4:::1", "IPv4"),
        .fail("v=spf1 ip4", "needs an address"),
        .fail("v=spf1 ip4/24"),
        .fail("v=spf1 ip6:::1/129", "CIDR"),
        .fail("v=spf1 ip6:::1/0128", "CIDR"),
        .fail("v=spf1 ip6:1.2.3.4", "IPv6"),
        .fail("v=spf1 ip6:2001:db8::g", "IPv6"),
        .fail("v=spf1 ip6", "needs an address"),
        // dual CIDR
        .fail("v=spf1 a/024", "CIDR"),
        .fail("v=spf1 a/33", "CIDR"),
        .fail("v=spf1 a//129", "CIDR"),
        .fail("v=spf1 a//0128", "CIDR"),
        .fail("v=spf1 mx/24/64"),
        .fail("v=spf1 mx/24///64"),
        .fail("v=spf1 a:example.com/33"),
        // modifiers
        .fail("v=spf1 redirect=a.example.com redirect=b.example.com", "redirect= appears twice"),
        .fail("v=spf1 redirect=a.example.com REDIRECT=a.example.com", "twice"),
        .fail("v=spf1 exp=a.example.com exp=b.example.com", "exp= appears twice"),
        .fail("v=spf1 -all exp=", "empty domain"),
        .fail("v=spf1 redirect="),
        .fail("v=spf1 1x=y", "modifier name"),
        .fail("v=spf1 =y", "modifier name"),
        .fail("v=spf1 -x=y", "modifier name"),
        .fail("v=spf1 x!=y", "modifier name"),
        .fail("v=spf1 foo=%"),
        .fail("v=spf1 foo=%{x}"),
        // macros
        .fail("v=spf1 include:%{x}.example.com", "macro letter"),
        .fail("v=spf1 exists:%{c}.example.com", "macro letter"),
        .fail("v=spf1 exists:%{r}.example.com", "macro letter"),
        .fail("v=spf1 exists:%{t}.example.com", "macro letter"),
        .fail("v=spf1 exists:foo.example.com%", "at the end"),
        .fail("v=spf1 exists:%{d", "macro"),
        .fail("v=spf1 exists:%{", "macro"),
        .fail("v=spf1 exists:%{d0}.example.com", "transformer 0"),
        .fail("v=spf1 exists:%{d2x}.example.com", "macro"),
        .fail("v=spf1 exists:%{d r}.example.com"),
        .fail("v=spf1 exists:%a.example.com", "not a macro"),
        .fail("v=spf1 -all exp=%{c}.example.com", "macro letter"),
        // domain-end
        .fail("v=spf1 a:example.123", "top-level label"),
        .fail("v=spf1 a:example", "top-level label"),
        .fail("v=spf1 include:example.-com", "top-level label"),
        .fail("v=spf1 include:example.com-", "top-level label"),
        .fail("v=spf1 include:example.com:80", "top-level label"),
        .fail("v=spf1 redirect=example.123", "top-level label"),
        .fail("v=spf1 exists:%{d}.123"),
        .fail("v=spf1 include:example.com..", "top-level label"),
        // characters
        .fail("v=spf1 -all\t", "U+9"),
        .fail("v=spf1\t-all", "U+9"),
        .fail("v=spf1 -all\r\n", "U+D"),
        .fail("v=spf1 a:exa\u{7F}mple.com", "U+7F"),
        .fail("v=spf1 a:exa\u{00E9}mple.com", "U+E9"),
        .fail("v=spf1 -all\u{0}", "U+0"),
    ]

    @Test(arguments: failing)
    func fails(_ f: F) {
        do {
            let record = try SPFRecord(f.text)
            Issue.record("'\(f.text)' parsed: \(record.directives.map(\.text))", sourceLocation: f.sourceLocation)
        } catch {
            if case .fails(let fragment?) = f.expectation {
                #expect(error.message.contains(fragment), "\(error.message)", sourceLocation: f.sourceLocation)
            }
        }
    }

    @Test(arguments: [
        ("v=spf1", true), ("v=spf1 -all", true), ("V=Spf1 a", true), ("v=spf1-all", false), ("v=spf10", false),
        ("v=spf", false), ("", false), (" v=spf1", false), ("spf2.0/pra", false), ("v=spf1\t-all", false),
    ])
    func isSPF1(_ text: String, _ expected: Bool) {
        #expect(SPFRecord.isSPF1(text) == expected)
    }

    @Test func directiveKeepsTheTermAsWritten() throws {
        let record = try SPFRecord("v=spf1 ~A:Example.COM/24 -all")
        #expect(record.directives.map(\.text) == ["~A:Example.COM/24", "-all"])
    }

    @Test func queriesDNS() throws {
        let record = try SPFRecord("v=spf1 include:a.example a mx ptr exists:b.example ip4:1.2.3.4 ip6:::1 all")
        #expect(record.directives.map(\.mechanism.queriesDNS) == [true, true, true, true, true, false, false, false])
    }
}

/// Macro strings (RFC 7208 7): parsing and expansion, with the examples of section 7.4.
@Suite("SPFMacroString")
struct SPFMacroStringTests {
    static func values(ip: String = "192.0.2.3", sender: String = "strong-bad@email.example.com") -> SPFMacroString.Values {
        let at = sender.lastIndex(of: "@")!
        return SPFMacroString.Values(
            sender: sender, localPart: String(sender[..<at]), senderDomain: String(sender[sender.index(after: at)...]),
            domain: "email.example.com", ip: IPAddress(ip)!, validatedName: { "mx.example.org" },
            helo: "mx.example.org", receiver: "receiver.example.net", timestamp: 1_700_000_000
        )
    }

    static func expand(_ text: String, explanation: Bool = false, _ v: SPFMacroString.Values = values()) throws -> String {
        try SPFMacroString(text, explanation: explanation).expand(v)
    }

    @Test(arguments: [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%{i}", "192.0.2.3"),
        ("%{i2}", "2.3"),
        ("%{v}", "in-addr"),
        ("%{h}", "mx.example.org"),
        ("%{p}", "mx.example.org"),
        ("%{DR}", "com.example.email"),
        ("%{d2R}", "example.email"),
        ("%{d100}", "email.example.com"),
        ("%{l+-}", "strong.bad"),
    ])
    func rfcExamples(_ macro: String, _ expected: String) throws {
        #expect(try Self.expand(macro) == expected)
    }

    @Test(arguments: [
        ("%{s=}", "strong-bad@email.example.com"),
        ("%{s-}", "strong.bad@email.example.com"),
        ("%{o.-}", "email.example.com"),
        ("%{o2r.}", "example.email"),
    ])
    func delimiters(_ macro: String, _ expected: String) throws {
        #expect(try Self.expand(macro) == expected)
    }

    @Test func ipv6Example() throws {
        let v = Self.values(ip: "2001:db8::cb01")
        let expanded = try Self.expand("%{ir}.%{v}._spf.%{d2}", v)
        #expect(expanded == "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com")
        #expect(expanded.lowercased() == "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
        #expect(try Self.expand("%{i}", v) == "2.0.0.1.0.D.B.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.C.B.0.1")
        #expect(try Self.expand("%{v}", v) == "ip6")
        #expect(try Self.expand("%{c}", explanation: true, v) == "2001:db8::cb01")
    }

    @Test func uppercaseLettersAreURLEscaped() throws {
        #expect(try Self.expand("%{S}") == "strong-bad%40email.example.com")
        #expect(try Self.expand("%{L}") == "strong-bad")
        let v = Self.values(sender: "joe+tag/x~y@example.com")
        #expect(try Self.expand("%{L}", v) == "joe%2Btag%2Fx~y")
        #expect(try Self.expand("%{l}", v) == "joe+tag/x~y")
        #expect(try Self.expand("%{S}", v) == "joe%2Btag%2Fx~y%40example.com")
        let odd = Self.values(sender: "a b=c\u{E9}@example.com")
        #expect(try Self.expand("%{L}", odd) == "a%20b%3Dc%C3%A9")
    }

    @Test(arguments: [
        ("%%", "%"), ("%_", " "), ("%-", "%20"), ("a%%b%_c%-d", "a%b c%20d"), ("%%{d}", "%{d}"), ("", ""),
        ("plain.example.com", "plain.example.com"), ("x.%{d1}.y", "x.com.y"),
    ])
    func escapes(_ text: String, _ expected: String) throws {
        #expect(try Self.expand(text) == expected)
    }

    @Test func explanationOnlyLetters() throws {
        #expect(try Self.expand("%{c}", explanation: true) == "192.0.2.3")
        #expect(try Self.expand("%{r}", explanation: true) == "receiver.example.net")
        #expect(try Self.expand("%{t}", explanation: true) == "1700000000")
        #expect(try Self.expand("%{o} does not authorize %{c} (SPF)", explanation: true)
                == "email.example.com does not authorize 192.0.2.3 (SPF)")
        for letter in ["c", "r", "t"] {
            #expect(throws: SPFMacroString.SyntaxError.self) { try SPFMacroString("%{\(letter)}") }
        }
        // Spaces are literal only in an explain-string.
        #expect(throws: SPFMacroString.SyntaxError.self) { try SPFMacroString("a b") }
        #expect(SPFMacroString.problem("a b", explanation: true) == nil)
        #expect(SPFMacroString.problem("a b", explanation: false) != nil)
    }

    @Test(arguments: ["%", "a%", "%{", "%{d", "%{d2", "%{d2r", "%{x}", "%{d0}", "%{d2rx}", "%a", "%{}", "%{ d}", "\u{1}", "\u{7F}", "é"])
    func malformed(_ text: String) {
        #expect(throws: SPFMacroString.SyntaxError.self) { try SPFMacroString(text, explanation: true) }
        #expect(SPFMacroString.problem(text, explanation: true) != nil)
    }

    @Test func parts() throws {
        let m = try SPFMacroString("x.%{L2R-_}.%%y")
        #expect(m.parts == [
            .literal("x."),
            .expand(letter: "l", uppercase: true, digits: 2, reverse: true, delimiters: ["-", "_"]),
            .literal(".%y"),
        ])
        #expect(m.hasExpansions)
        #expect(try !SPFMacroString("a.b%%c").hasExpansions)
        #expect(try SPFMacroString("%{d99999}").parts == [.expand(letter: "d", uppercase: false, digits: 128, reverse: false, delimiters: [])])
    }

    @Test func emptyLabelsSurviveSplitting() throws {
        let v = SPFMacroString.Values(
            sender: "a..b@x.test", localPart: "a..b", senderDomain: "x.test", domain: "x.test", ip: IPAddress("192.0.2.3")!,
            validatedName: { "unknown" }, helo: "h.test", receiver: "r.test", timestamp: 0
        )
        #expect(try SPFMacroString("%{l}").expand(v) == "a..b")
        #expect(try SPFMacroString("%{lr}").expand(v) == "b..a")
        #expect(try SPFMacroString("%{l1}").expand(v) == "b")
    }
}
