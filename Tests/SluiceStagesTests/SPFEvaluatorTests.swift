import SluiceDNS
import SluiceStageAPI
@testable import SluiceStages
import Testing

/// The zone the SPF tests ask: one domain per case.
let spfZone: StaticResolver = {
    var z = StaticResolver()
    func txt(_ name: String, _ text: String) { z.addText(name, text) }
    func a(_ name: String, _ address: String) { z.add(name, .a, .a(IPAddress(address)!)) }
    func aaaa(_ name: String, _ address: String) { z.add(name, .aaaa, .aaaa(IPAddress(address)!)) }

    txt("pass.test", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:2::/48 -all")
    txt("example.org", "v=spf1 ip4:192.0.2.1 -all")
    txt("fail.test", "v=spf1 -all")
    txt("softfail.test", "v=spf1 ~all")
    txt("neutral.test", "v=spf1 ?all")
    txt("default.test", "v=spf1 ip4:10.1.1.1")  // no match, no all: neutral
    a("norecord.test", "192.0.2.1")
    txt("norecord.test", "some other text")
    txt("norecord.test", "v=spf10 not spf")
    txt("syntax.test", "v=spf1 foo -all")
    txt("syntax2.test", "v=spf1 ip4:1.2.3.04 -all")
    txt("two.test", "v=spf1 +all")
    txt("two.test", "v=spf1 -all")
    txt("includenone.test", "v=spf1 include:norecord.test -all")
    txt("includenx.test", "v=spf1 include:missing.test -all")
    txt("includesyntax.test", "v=spf1 include:syntax.test -all")
    z.addTimeout("timeout.test")
    txt("atimeout.test", "v=spf1 a:slow.test -all")
    z.addTimeout("slow.test")
    txt("includetimeout.test", "v=spf1 include:timeout.test -all")
    // include and redirect
    txt("include.test", "v=spf1 include:pass.test ~all")
    txt("redirect.test", "v=spf1 redirect=pass.test")
    txt("redirectnone.test", "v=spf1 redirect=norecord.test")
    txt("macro.test", "v=spf1 include:%{d1}.sub.pass.test -all")
    txt("test.sub.pass.test", "v=spf1 ip4:198.51.100.99 -all")
    // mx and a with CIDR
    txt("mx.test", "v=spf1 mx/24 -all")
    z.add("mx.test", .mx, .mx(preference: 10, exchange: "mail.mx.test"))
    z.add("mx.test", .mx, .mx(preference: 20, exchange: "backup.mx.test"))
    a("mail.mx.test", "203.0.113.5")
    a("backup.mx.test", "198.18.0.1")
    txt("a.test", "v=spf1 a:host.a.test/28 -all")
    a("host.a.test", "198.51.100.16")
    txt("aself.test", "v=spf1 a -all")
    a("aself.test", "192.0.2.77")
    txt("a6.test", "v=spf1 a/32//64 -all")
    a("a6.test", "198.51.100.1")
    aaaa("a6.test", "2001:db8:1::1")
    // void lookups
    txt("void2.test", "v=spf1 a:nx1.void.test mx:nx2.void.test -all")
    txt("void3.test", "v=spf1 a:nx1.void.test mx:nx2.void.test a:nx3.void.test -all")
    txt("voidnodata.test", "v=spf1 a:nodata.void.test a:nodata.void.test a:nodata.void.test -all")
    txt("nodata.void.test", "not spf")
    // the 10-term limit
    for i in 1...11 {
        a("h\(i).terms.test", "10.0.0.\(i)")
        txt("i\(i).terms.test", "v=spf1 ip4:10.9.9.\(i)")
    }
    txt("a10.terms.test", "v=spf1 " + (1...10).map { "a:h\($0).terms.test" }.joined(separator: " ") + " -all")
    txt("a11.terms.test", "v=spf1 " + (1...11).map { "a:h\($0).terms.test" }.joined(separator: " ") + " -all")
    txt("inc10.terms.test", "v=spf1 " + (1...10).map { "include:i\($0).terms.test" }.joined(separator: " ") + " -all")
    txt("inc11.terms.test", "v=spf1 " + (1...11).map { "include:i\($0).terms.test" }.joined(separator: " ") + " -all")
    txt("mixed11.terms.test", "v=spf1 " + (1...6).map { "a:h\($0).terms.test" }.joined(separator: " ") + " "
        + (1...5).map { "include:i\($0).terms.test" }.joined(separator: " ") + " -all")
    // explanations
    txt("exp.test", "v=spf1 -all exp=why.exp.test")
    txt("why.exp.test", "%{s} is not allowed from %{i} (%{c}); see %{d}/%{l}/%{o}")
    txt("expmissing.test", "v=spf1 -all exp=nothere.exp.test")
    txt("expmacro.test", "v=spf1 -all exp=%{l}.why.expmacro.test")
    txt("joe.why.expmacro.test", "Sorry %{l}, %{v} client %{i} is refused")
    txt("expbad.test", "v=spf1 -all exp=bad.exp.test")
    txt("bad.exp.test", "%{x} is not a macro")
    txt("redirexp.test", "v=spf1 redirect=exp.test")
    txt("incexp.test", "v=spf1 include:exp.test -all")
    txt("expredirect.test", "v=spf1 redirect=fail.test exp=why.exp.test")
    txt("pexp.test", "v=spf1 -all exp=why.pexp.test")
    txt("why.pexp.test", "%{p} may not send for %{d}")
    // exists and ptr
    txt("exists.test", "v=spf1 exists:%{ir}.allow.exists.test -all")
    a("1.2.0.192.allow.exists.test", "127.0.0.2")
    txt("ptr.test", "v=spf1 ptr -all")
    z.add("1.2.0.192.in-addr.arpa", .ptr, .ptr("host.ptr.test"))
    z.add("2.2.0.192.in-addr.arpa", .ptr, .ptr("host.ptr.test"))  // does not map back
    a("host.ptr.test", "192.0.2.1")
    // HELO
    txt("helo.test", "v=spf1 ip4:192.0.2.1 -all")
    return z
}()

@Suite("SPFEvaluator")
struct SPFEvaluatorTests {
    static let evaluator = SPFEvaluator(resolver: spfZone, receiver: "receiver.test", threads: 2)

    func check(_ ip: String, _ sender: String, helo: String = "mx.client.test") async -> SPFOutcome {
        await Self.evaluator.check(ip: IPAddress(ip)!, sender: sender, helo: helo)
    }

    @Test(arguments: [
        ("192.0.2.1", "user@pass.test", SPFResult.pass),
        ("192.0.2.200", "user@pass.test", .pass),
        ("2001:db8:2::25", "user@pass.test", .pass),
        ("198.51.100.1", "user@pass.test", .fail),
        ("2001:db8:3::25", "user@pass.test", .fail),
        ("192.0.2.1", "user@fail.test", .fail),
        ("192.0.2.1", "user@softfail.test", .softfail),
        ("192.0.2.1", "user@neutral.test", .neutral),
        ("192.0.2.1", "user@default.test", .neutral),
        ("192.0.2.1", "user@norecord.test", .none),
        ("192.0.2.1", "user@missing.test", .none),
        ("192.0.2.1", "user@localhost", .none),
        ("192.0.2.1", "user@[192.0.2.1]", .none),
        ("192.0.2.1", "user@syntax.test", .permerror),
        ("192.0.2.1", "user@syntax2.test", .permerror),
        ("192.0.2.1", "user@two.test", .permerror),
        ("192.0.2.1", "user@includenone.test", .permerror),
        ("192.0.2.1", "user@includenx.test", .permerror),
        ("192.0.2.1", "user@includesyntax.test", .permerror),
        ("192.0.2.1", "user@redirectnone.test", .permerror),
        ("192.0.2.1", "user@timeout.test", .temperror),
        ("192.0.2.1", "user@atimeout.test", .temperror),
        ("192.0.2.1", "user@includetimeout.test", .temperror),
        ("192.0.2.1", "user@include.test", .pass),
        ("198.51.100.1", "user@include.test", .softfail),
        ("192.0.2.1", "user@redirect.test", .pass),
        ("198.51.100.1", "user@redirect.test", .fail),
        ("198.51.100.99", "user@macro.test", .pass),
        ("198.51.100.98", "user@macro.test", .fail),
        ("203.0.113.77", "user@mx.test", .pass),
        ("198.18.0.200", "user@mx.test", .pass),
        ("203.0.114.5", "user@mx.test", .fail),
        ("198.51.100.20", "user@a.test", .pass),
        ("198.51.100.31", "user@a.test", .pass),
        ("198.51.100.32", "user@a.test", .fail),
        ("192.0.2.77", "user@aself.test", .pass),
        ("192.0.2.78", "user@aself.test", .fail),
        ("198.51.100.1", "user@a6.test", .pass),
        ("198.51.100.2", "user@a6.test", .fail),
        ("2001:db8:1::ffff", "user@a6.test", .pass),
        ("2001:db8:1:1::1", "user@a6.test", .fail),
        ("192.0.2.1", "user@void2.test", .fail),
        ("192.0.2.1", "user@void3.test", .permerror),
        ("192.0.2.1", "user@voidnodata.test", .permerror),
        ("192.0.2.1", "user@a10.terms.test", .fail),
        ("192.0.2.1", "user@a11.terms.test", .permerror),
        ("10.0.0.11", "user@a11.terms.test", .permerror),
        ("192.0.2.1", "user@inc10.terms.test", .fail),
        ("192.0.2.1", "user@inc11.terms.test", .permerror),
        ("192.0.2.1", "user@mixed11.terms.test", .permerror),
        ("10.0.0.5", "user@a10.terms.test", .pass),
        ("192.0.2.1", "user@exists.test", .pass),
        ("192.0.2.2", "user@exists.test", .fail),
        ("192.0.2.1", "user@ptr.test", .pass),
        ("192.0.2.2", "user@ptr.test", .fail),
        ("192.0.2.3", "user@ptr.test", .fail),
    ])
    func results(_ ip: String, _ sender: String, _ expected: SPFResult) async {
        let outcome = await check(ip, sender)
        #expect(outcome.result == expected, "\(outcome.problem ?? "")")
        #expect(outcome.identity == .mailfrom)
        if expected == .permerror || expected == .temperror {
            #expect(outcome.problem != nil)
        }
    }

    @Test func outcomeFields() async {
        let outcome = await check("192.0.2.1", "user@pass.test")
        #expect(outcome.domain == "pass.test")
        #expect(outcome.sender == "user@pass.test")
        #expect(outcome.clientIP == IPAddress("192.0.2.1"))
        #expect(outcome.helo == "mx.client.test")
        #expect(outcome.explanation == nil)
        #expect(outcome.queries >= 1)
    }

    @Test func limitProblems() async {
        #expect(await check("192.0.2.1", "user@void3.test").problem?.contains("void") == true)
        #expect(await check("192.0.2.1", "user@a11.terms.test").problem?.contains("more than 10") == true)
        #expect(await check("192.0.2.1", "user@two.test").problem?.contains("2 SPF records") == true)
    }

    @Test func configurableLimits() async {
        var limits = SPFEvaluator.Limits()
        limits.voidLookups = 0
        limits.dnsTerms = 2
        let strict = SPFEvaluator(resolver: spfZone, receiver: "receiver.test", limits: limits, threads: 1)
        #expect(await strict.check(ip: IPAddress("192.0.2.1")!, sender: "u@void2.test", helo: "h.test").result == .permerror)
        #expect(await strict.check(ip: IPAddress("192.0.2.1")!, sender: "u@include.test", helo: "h.test").result == .pass)
        #expect(await strict.check(ip: IPAddress("198.51.100.1")!, sender: "u@mx.test", helo: "h.test").result == .fail)
        #expect(await strict.check(ip: IPAddress("192.0.2.1")!, sender: "u@a10.terms.test", helo: "h.test").result == .permerror)
    }

    // MARK: Explanations

    @Test func explanationFromExp() async {
        let outcome = await check("198.51.100.1", "user@exp.test")
        #expect(outcome.result == .fail)
        #expect(outcome.explanation == "user@exp.test is not allowed from 198.51.100.1 (198.51.100.1); see exp.test/user/exp.test")
    }

    @Test func explanationWithMacrosInTheExpDomain() async {
        let outcome = await check("2001:db8::cb01", "joe@expmacro.test")
        #expect(outcome.result == .fail)
        #expect(outcome.explanation?.lowercased()
                == "sorry joe, ip6 client 2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1 is refused")
    }

    @Test func defaultExplanation() async {
        let outcome = await check("192.0.2.1", "user@fail.test")
        #expect(outcome.result == .fail)
        #expect(outcome.explanation == "fail.test does not authorize 192.0.2.1 to send its mail (SPF)")
        // exp= naming a missing TXT record, or a malformed one, falls back to the default.
        #expect(await check("192.0.2.1", "user@expmissing.test").explanation
                == "expmissing.test does not authorize 192.0.2.1 to send its mail (SPF)")
        #expect(await check("192.0.2.1", "user@expbad.test").explanation
                == "expbad.test does not authorize 192.0.2.1 to send its mail (SPF)")
    }

    @Test func explanationAfterRedirectIsTheTargets() async {
        // RFC 7208 6.2: the exp= of a redirect target applies, evaluated for the target domain.
        #expect(await check("198.51.100.1", "user@redirexp.test").explanation
                == "user@redirexp.test is not allowed from 198.51.100.1 (198.51.100.1); see exp.test/user/redirexp.test")
        // ... and the original domain's exp= does not.
        #expect(await check("198.51.100.1", "user@expredirect.test").explanation
                == "expredirect.test does not authorize 198.51.100.1 to send its mail (SPF)")
    }

    @Test func explanationOfAnIncludedRecordIsNotUsed() async {
        let outcome = await check("198.51.100.1", "user@incexp.test")
        #expect(outcome.result == .fail)
        #expect(outcome.explanation == "incexp.test does not authorize 198.51.100.1 to send its mail (SPF)")
    }

    @Test func validatedNameInAnExplanation() async {
        #expect(await check("192.0.2.1", "user@pexp.test").explanation == "host.ptr.test may not send for pexp.test")
        #expect(await check("192.0.2.2", "user@pexp.test").explanation == "unknown may not send for pexp.test")
    }

    @Test func customDefaultExplanation() async {
        let e = SPFEvaluator(resolver: spfZone, receiver: "receiver.test", threads: 1,
                             defaultExplanation: "See https://%{r}/spf?s=%{S}&c=%{c}")
        let outcome = await e.check(ip: IPAddress("192.0.2.1")!, sender: "a+b@fail.test", helo: "h.test")
        #expect(outcome.explanation == "See https://receiver.test/spf?s=a%2Bb%40fail.test&c=192.0.2.1")
    }

    @Test func noExplanationUnlessFail() async {
        #expect(await check("192.0.2.1", "user@softfail.test").explanation == nil)
        #expect(await check("192.0.2.1", "user@syntax.test").explanation == nil)
    }

    // MARK: Client and identities

    @Test func ipv4MappedClientIsIPv4() async throws {
        let mapped = try #require(IPAddress("::ffff:192.0.2.1"))
        #expect(mapped.isIPv4)
        let outcome = await Self.evaluator.check(ip: mapped, sender: "user@example.org", helo: "mx.client.test")
        #expect(outcome.result == .pass)
        #expect(outcome.clientIP.description == "192.0.2.1")
        #expect(outcome.receivedSPF(receiver: "receiver.test").contains("client-ip=192.0.2.1;"))
    }

    @Test func nullSenderChecksHELO() async {
        let outcome = await Self.evaluator.check(ip: IPAddress("192.0.2.1")!, sender: "", helo: "helo.test")
        #expect(outcome.result == .pass)
        #expect(outcome.identity == .helo)
        #expect(outcome.sender == "postmaster@helo.test")
        #expect(outcome.domain == "helo.test")
        #expect(outcome.authenticationResult.resinfo == "spf=pass smtp.helo=helo.test")
        let fail = await Self.evaluator.check(ip: IPAddress("192.0.2.2")!, sender: "", helo: "helo.test")
        #expect(fail.result == .fail)
        #expect(fail.identity == .helo)
        #expect(fail.explanation == "helo.test does not authorize 192.0.2.2 to send its mail (SPF)")
    }

    @Test func heloCheck() async {
        let outcome = await Self.evaluator.checkHELO(ip: IPAddress("192.0.2.1")!, helo: "helo.test")
        #expect(outcome.result == .pass)
        #expect(outcome.identity == .helo)
        #expect(outcome.sender == "postmaster@helo.test")
        let bare = await Self.evaluator.checkHELO(ip: IPAddress("192.0.2.1")!, helo: "localhost")
        #expect(bare.result == .none)
    }

    @Test func senderWithoutLocalPartIsPostmaster() async {
        let outcome = await check("192.0.2.1", "@pass.test")
        #expect(outcome.sender == "postmaster@pass.test")
        #expect(outcome.result == .pass)
        let noAt = await check("192.0.2.1", "pass.test")
        #expect(noAt.sender == "postmaster@pass.test")
        #expect(noAt.domain == "pass.test")
    }

    @Test func concurrentChecks() async {
        let results = await withTaskGroup(of: SPFResult.self) { group in
            for i in 0..<20 {
                group.addTask {
                    await Self.evaluator.check(ip: IPAddress(i % 2 == 0 ? "192.0.2.1" : "198.51.100.1")!,
                                               sender: "u\(i)@include.test", helo: "h.test").result
                }
            }
            var all: [SPFResult] = []
            for await r in group { all.append(r) }
            return all
        }
        #expect(results.filter { $0 == .pass }.count == 10)
        #expect(results.filter { $0 == .softfail }.count == 10)
    }

    // MARK: Headers

    @Test func receivedSPF() async {
        let outcome = await check("192.0.2.1", "user@example.org")
        #expect(outcome.result == .pass)
        let field = outcome.receivedSPF(receiver: "receiver.test")
        #expect(field.hasPrefix("pass (receiver.test: domain of user@example.org designates 192.0.2.1 as permitted sender)\r\n\t"))
        for pair in ["client-ip=192.0.2.1", "envelope-from=user@example.org", "helo=mx.client.test",
                     "receiver=receiver.test", "identity=mailfrom"] {
            #expect(field.contains(pair), "\(pair)")
        }
        #expect(field == """
            pass (receiver.test: domain of user@example.org designates 192.0.2.1 as permitted sender)\r
            \tclient-ip=192.0.2.1;\r
            \tenvelope-from=user@example.org;\r
            \thelo=mx.client.test;\r
            \treceiver=receiver.test;\r
            \tidentity=mailfrom
            """)
        #expect(!field.contains("problem="))
        #expect(outcome.authenticationResult.resinfo == "spf=pass smtp.mailfrom=user@example.org")
        #expect(outcome.authenticationResult == AuthenticationResult(
            method: "spf", result: "pass", properties: [.init("smtp.mailfrom", "user@example.org")]))
    }

    @Test func receivedSPFForErrorsNamesTheProblem() async {
        let outcome = await check("192.0.2.1", "user@syntax.test")
        let field = outcome.receivedSPF(receiver: "receiver.test")
        #expect(field.hasPrefix("permerror (receiver.test: permanent error checking domain of user@syntax.test: "))
        #expect(field.contains("problem=\""))
        #expect(outcome.authenticationResult.resinfo == "spf=permerror smtp.mailfrom=user@syntax.test")
    }

    @Test func receivedSPFQuotesAndCommentSafety() {
        let outcome = SPFOutcome(
            result: .temperror, identity: .mailfrom, domain: "x.test", sender: "\"odd local\"@x.test",
            clientIP: IPAddress("2001:db8::1")!, helo: "[192.0.2.1]", problem: "DNS (timeout) \"x\"\r\n"
        )
        let field = outcome.receivedSPF(receiver: "r.test")
        #expect(field.contains("client-ip=2001:db8::1;"))
        #expect(field.contains("envelope-from=\"\\\"odd local\\\"@x.test\";"))
        #expect(field.contains("helo=\"[192.0.2.1]\";"))
        #expect(field.contains("problem=\"DNS (timeout) \\\"x\\\"\""))
        // Parentheses inside the comment are replaced so the comment stays balanced.
        let comment = field.prefix { $0 != "\r\n" && $0 != "\r" }
        #expect(comment == "temperror (r.test: temporary error checking domain of \"odd local\"@x.test: DNS [timeout] \"x\")")
    }

    @Test(arguments: [
        ("user@example.org", "user@example.org"), ("", "\"\""), (".dot@x.test", "\".dot@x.test\""),
        ("a b@x.test", "\"a b@x.test\""), ("a\"b@x", "\"a\\\"b@x\""), ("a\\b@x", "\"a\\\\b@x\""),
    ])
    func quoted(_ raw: String, _ expected: String) {
        #expect(SPFOutcome.quoted(raw) == expected)
    }
}
