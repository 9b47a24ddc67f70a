import SMTPCore
import SluiceDNS
import SluiceStageAPI
import SluiceStageTesting
@testable import SluiceStages
import Synchronization
import Testing

/// `dmarc` through `StageHarness`, over a static zone of `_dmarc` records. The SPF and DKIM
/// outcomes are put into the transaction as the gateway's earlier stages leave them: the `spf`
/// stage records `spf=<result> smtp.mailfrom=<address>` (or `smtp.helo=<name>` for the null
/// sender) in the transaction's results, `dkim-verify` stores its per-signature results under
/// `DKIMVerifyStage.resultsKey` (a milter's DKIM verdicts arrive as recorded `dkim=` results).
@Suite("DMARCStage")
struct DMARCStageTests {
    // MARK: The zone

    static func zone() -> StaticResolver {
        var z = StaticResolver()
        // example.org: a policy for the organizational domain and another for its subdomains.
        z.addText("_dmarc.example.org", "v=DMARC1; p=reject; sp=quarantine")
        z.addText("_dmarc.own.example.org", "v=DMARC1; p=none; sp=reject")
        // example.net: relaxed (the default) at the organizational domain, strict below it.
        z.addText("_dmarc.example.net", "v=DMARC1; p=reject")
        z.addText("_dmarc.strict.example.net", "v=DMARC1; p=reject; aspf=s; adkim=s")
        // example.com: no organizational record; subdomains with their own.
        z.addText("example.com", "v=spf1 -all")
        z.addText("_dmarc.quarantine.example.com", "v=DMARC1; p=quarantine")
        z.addText("_dmarc.none.example.com", "v=DMARC1; p=none")
        z.addText("_dmarc.pct0.example.com", "v=DMARC1; p=reject; pct=0")
        z.addText("_dmarc.qpct0.example.com", "v=DMARC1; p=quarantine; pct=0")
        z.addText("_dmarc.pct50.example.com", "v=DMARC1; p=reject; pct=50")
        z.add("_dmarc.split.example.com", .txt, .txt([Array("v=DMARC1; ".utf8), Array("p=reject".utf8)]))
        z.addText("_dmarc.compact.example.com", "v=DMARC1;p=reject")
        z.addText("_dmarc.bad.example.com", "v=DMARC1; p=bogus")
        z.addText("_dmarc.two.example.com", "v=DMARC1; p=reject")
        z.addText("_dmarc.two.example.com", "v=DMARC1; p=none")
        z.addText("_dmarc.mixed.example.com", "google-site-verification=abc")
        z.addText("_dmarc.mixed.example.com", "v=DMARC1; p=reject")
        z.addText("_dmarc.v10.example.com", "v=DMARC10; p=reject")
        z.addText("_dmarc.nov.example.com", "p=reject")
        z.addText("_dmarc.slow.example.com", "v=DMARC1; p=reject")
        z.addTimeout("_dmarc.slow.example.com")
        // example.info: the organizational record cannot be fetched.
        z.addTimeout("_dmarc.example.info")
        // Two records at a subdomain of a domain with an organizational policy.
        z.addText("_dmarc.two.example.org", "v=DMARC1; p=none")
        z.addText("_dmarc.two.example.org", "v=DMARC1; p=none; adkim=s")
        z.addText("_dmarc.xn--bcher-kva.example.com", "v=DMARC1; p=reject")
        z.addText("_dmarc.spaced.example.com", "v = DMARC1; p=reject")
        return z
    }

    /// The zone, with every question asked kept, and SERVFAIL for some names.
    struct RecordingResolver: DNSResolver {
        let zone: StaticResolver
        var serverFailures: Set<String> = []
        let asked = Captured<String>()

        func query(_ name: String, _ type: DNSRecordType) async throws -> DNSAnswer {
            asked.append(name.lowercased())
            if serverFailures.contains(name.lowercased()) {
                return DNSAnswer(name: name, type: type, responseCode: .serverFailure, records: [])
            }
            return try zone.answer(name, type)
        }
    }

    // MARK: Running a message

    enum SPFInput {
        case mailfrom(String)
        case helo(String)
    }

    struct Run {
        var decision: StageDecision
        /// `dmarc=...` as the stage recorded it.
        var dmarc: [String]
        var evaluation: DMARCStage.Evaluation?
        var outcome: StageHarness.MessageOutcome
    }

    static func stage(_ config: [String: ConfigValue] = [:], resolver: any DNSResolver = RecordingResolver(zone: zone())) throws -> DMARCStage {
        try DMARCStage(config: .testing(config), environment: .testing(resolver: resolver))
    }

    /// One message: MAIL FROM `sender`, the SPF result for it (or for the HELO name with the
    /// null sender), the DKIM signatures (d=, result), then the message with `fromFields`.
    static func run(
        _ stage: DMARCStage, from fromFields: [String], sender: String = "bounce@example.com", spf: String? = "fail",
        helo: String = "mail.example.com", dkim: [(domain: String, result: String)]? = nil,
        dkimAsRecordedResults: Bool = false, client: String = "192.0.2.10"
    ) async throws -> Run {
        var h = StageHarness(stage: stage, clientAddress: client)
        _ = try await h.helo(helo)
        _ = try await h.mailFrom(sender)
        let tx = try #require(h.transaction)
        if let spf {
            let identity = sender.isEmpty ? AuthenticationResult.Property("smtp.helo", helo) : .init("smtp.mailfrom", sender)
            tx.results.record(AuthenticationResult(method: "spf", result: spf, properties: [identity]))
        }
        if let dkim {
            if dkimAsRecordedResults {
                for s in dkim {
                    tx.results.record(AuthenticationResult(method: "dkim", result: s.result, properties: [.init("header.d", s.domain), .init("header.s", "sel")]))
                }
            } else {
                tx.state[DKIMVerifyStage.resultsKey] = dkim.map {
                    DKIMVerifyStage.SignatureResult(domain: $0.domain, selector: "sel", algorithm: "rsa-sha256", result: $0.result, reason: nil, signaturePrefix: "abcdefgh")
                }
                if dkim.isEmpty { tx.results.record(AuthenticationResult(method: "dkim", result: "none")) }
            }
        }
        let text = fromFields.map { "From: \($0)\n" }.joined() + "To: <user@example.test>\nSubject: dmarc\nMessage-ID: <1@example.com>\n\nbody\n"
        let out = try await h.message(text, to: ["user@example.test"])
        return Run(
            decision: out.decision, dmarc: out.results.filter { $0.method == "dmarc" }.map(\.resinfo),
            evaluation: tx.state[DMARCStage.evaluationKey], outcome: out
        )
    }

    static func run(_ stage: DMARCStage, from: String, sender: String = "bounce@example.com", spf: String? = "fail",
                    helo: String = "mail.example.com", dkim: [(domain: String, result: String)]? = nil,
                    dkimAsRecordedResults: Bool = false) async throws -> Run {
        try await run(stage, from: [from], sender: sender, spf: spf, helo: helo, dkim: dkim, dkimAsRecordedResults: dkimAsRecordedResults)
    }

    static func rejected(_ domain: String) -> StageVerdict {
        .reject(550, "5.7.1", "Message rejected by the DMARC policy of \(domain)")
    }

    // MARK: p=

    @Test func pRejectWithFailingSPFAndNoDKIMIsRejected() async throws {
        let r = try await Self.run(Self.stage(), from: "<ceo@example.org>", sender: "ceo@example.org", dkim: [])
        #expect(r.decision.verdict == Self.rejected("example.org"))
        #expect(r.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=example.org"])
        #expect(r.evaluation == DMARCStage.Evaluation(result: "fail", fromDomain: "example.org", policy: "reject", disposition: "reject"))
        #expect(r.decision.edits.isEmpty)
    }

    @Test func alignedSPFPassIsDMARCPass() async throws {
        let r = try await Self.run(Self.stage(), from: "CEO <ceo@example.org>", sender: "ceo@example.org", spf: "pass", dkim: [])
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=example.org"])
        #expect(r.evaluation == DMARCStage.Evaluation(result: "pass", fromDomain: "example.org", policy: "reject", disposition: "none"))
        // The gateway's Authentication-Results field carries every method, dmarc last.
        #expect(r.outcome.header("Authentication-Results") == [
            "mx.example.test;\tspf=pass smtp.mailfrom=ceo@example.org;\tdkim=none;\tdmarc=pass (p=reject dis=NONE) header.from=example.org",
        ])
    }

    @Test func pQuarantineIsQuarantined() async throws {
        let r = try await Self.run(Self.stage(), from: "<a@quarantine.example.com>", sender: "a@quarantine.example.com")
        #expect(r.decision.verdict == .quarantine(reason: "DMARC policy of quarantine.example.com (p=quarantine)"))
        #expect(r.dmarc == ["dmarc=fail (p=quarantine dis=QUARANTINE) header.from=quarantine.example.com"])
    }

    @Test func pNoneIsOnlyRecorded() async throws {
        let r = try await Self.run(Self.stage(), from: "<a@none.example.com>", sender: "a@none.example.com")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=fail (p=none dis=NONE) header.from=none.example.com"])
        #expect(r.evaluation?.disposition == "none")
    }

    @Test func aRecordWithoutSpacesAndASplitTXTRecordAreRead() async throws {
        let compact = try await Self.run(Self.stage(), from: "<a@compact.example.com>")
        #expect(compact.decision.verdict == Self.rejected("compact.example.com"))
        let split = try await Self.run(Self.stage(), from: "<a@split.example.com>")
        #expect(split.decision.verdict == Self.rejected("split.example.com"))
        #expect(split.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=split.example.com"])
    }

    @Test func otherTXTRecordsBesideTheDMARCRecordAreIgnored() async throws {
        let r = try await Self.run(Self.stage(), from: "<a@mixed.example.com>")
        #expect(r.decision.verdict == Self.rejected("mixed.example.com"))
    }

    // MARK: sp= and the organizational domain

    @Test func aSubdomainWithoutARecordGetsTheOrganizationalSP() async throws {
        let resolver = RecordingResolver(zone: Self.zone())
        let r = try await Self.run(Self.stage(resolver: resolver), from: "<ceo@sub.example.org>", sender: "ceo@sub.example.org")
        #expect(r.decision.verdict == .quarantine(reason: "DMARC policy of sub.example.org (p=quarantine)"))
        #expect(r.dmarc == ["dmarc=fail (p=quarantine dis=QUARANTINE) header.from=sub.example.org"])
        #expect(resolver.asked.all == ["_dmarc.sub.example.org", "_dmarc.example.org"])
    }

    @Test func aDeepSubdomainAlsoFallsBackToTheOrganizationalDomainOnly() async throws {
        let resolver = RecordingResolver(zone: Self.zone())
        let r = try await Self.run(Self.stage(resolver: resolver), from: "<ceo@a.b.example.org>", sender: "ceo@a.b.example.org")
        #expect(r.decision.verdict == .quarantine(reason: "DMARC policy of a.b.example.org (p=quarantine)"))
        #expect(resolver.asked.all == ["_dmarc.a.b.example.org", "_dmarc.example.org"])
    }

    @Test func aSubdomainWithoutSPGetsTheOrganizationalP() async throws {
        let r = try await Self.run(Self.stage(), from: "<ceo@news.example.net>", sender: "ceo@elsewhere.example.com")
        #expect(r.decision.verdict == Self.rejected("news.example.net"))
        #expect(r.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=news.example.net"])
    }

    @Test func theFromDomainsOwnRecordAppliesPNotSP() async throws {
        // _dmarc.own.example.org: p=none; sp=reject — sp= is for subdomains of own.example.org only.
        let r = try await Self.run(Self.stage(), from: "<ceo@own.example.org>", sender: "ceo@own.example.org")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=fail (p=none dis=NONE) header.from=own.example.org"])
    }

    @Test func theOrganizationalDomainItselfAppliesP() async throws {
        let resolver = RecordingResolver(zone: Self.zone())
        let r = try await Self.run(Self.stage(resolver: resolver), from: "<ceo@example.org>", sender: "ceo@example.org")
        #expect(r.decision.verdict == Self.rejected("example.org"))
        #expect(resolver.asked.all == ["_dmarc.example.org"])
    }

    // MARK: pct=

    @Test func pctZeroDowngradesRejectToQuarantineAndQuarantineToNone() async throws {
        let reject = try await Self.run(Self.stage(), from: "<a@pct0.example.com>")
        #expect(reject.decision.verdict == .quarantine(reason: "DMARC policy of pct0.example.com (p=reject)"))
        #expect(reject.dmarc == ["dmarc=fail (p=reject dis=QUARANTINE) header.from=pct0.example.com"])
        #expect(reject.evaluation?.disposition == "quarantine")

        let quarantine = try await Self.run(Self.stage(), from: "<a@qpct0.example.com>")
        #expect(quarantine.decision.verdict == .continue)
        #expect(quarantine.dmarc == ["dmarc=fail (p=quarantine dis=NONE) header.from=qpct0.example.com"])
    }

    @Test func pctIsIgnoredWhenHonorPctIsFalse() async throws {
        let r = try await Self.run(Self.stage(["honor_pct": .bool(false)]), from: "<a@pct0.example.com>")
        #expect(r.decision.verdict == Self.rejected("pct0.example.com"))
        #expect(r.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=pct0.example.com"])
    }

    @Test func pctFiftyAppliesThePolicyToSomeMessagesAndTheNextLowerToTheRest() async throws {
        let stage = try Self.stage()
        var seen: Set<String> = []
        for _ in 0..<100 {
            let r = try await Self.run(stage, from: "<a@pct50.example.com>")
            switch r.decision.verdict {
            case Self.rejected("pct50.example.com"): seen.insert("reject")
            case .quarantine(reason: "DMARC policy of pct50.example.com (p=reject)"): seen.insert("quarantine")
            default: Issue.record("unexpected \(r.decision.verdict)")
            }
            if seen.count == 2 { break }
        }
        // 100 fair coin tosses all alike: 2^-99.
        #expect(seen == ["reject", "quarantine"])
    }

    @Test func aPassIsNeverSubjectToPct() async throws {
        let r = try await Self.run(Self.stage(), from: "<a@pct0.example.com>", sender: "a@pct0.example.com", spf: "pass")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=pct0.example.com"])
    }

    // MARK: Alignment

    @Test func relaxedSPFAlignmentAcceptsTheSameOrganizationalDomain() async throws {
        let r = try await Self.run(Self.stage(), from: "<ceo@example.net>", sender: "bounce@mail.example.net", spf: "pass")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=example.net"])
    }

    @Test func anUnalignedSPFPassDoesNotHelp() async throws {
        let r = try await Self.run(Self.stage(), from: "<ceo@example.net>", sender: "bounce@example.org", spf: "pass")
        #expect(r.decision.verdict == Self.rejected("example.net"))
    }

    @Test func strictSPFAlignmentNeedsTheExactDomain() async throws {
        let loose = try await Self.run(Self.stage(), from: "<ceo@strict.example.net>", sender: "bounce@mail.strict.example.net", spf: "pass")
        #expect(loose.decision.verdict == Self.rejected("strict.example.net"))
        #expect(loose.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=strict.example.net"])
        let exact = try await Self.run(Self.stage(), from: "<ceo@strict.example.net>", sender: "bounce@strict.example.net", spf: "pass")
        #expect(exact.decision.verdict == .continue)
        #expect(exact.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=strict.example.net"])
    }

    @Test func relaxedDKIMAlignmentAcceptsTheOrganizationalDomain() async throws {
        let r = try await Self.run(Self.stage(), from: "<ceo@news.example.net>", sender: "x@example.com", dkim: [("example.net", "pass")])
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=news.example.net"])
    }

    @Test func strictDKIMAlignmentNeedsTheExactDomain() async throws {
        let loose = try await Self.run(Self.stage(), from: "<ceo@strict.example.net>", sender: "x@example.com", dkim: [("example.net", "pass")])
        #expect(loose.decision.verdict == Self.rejected("strict.example.net"))
        let exact = try await Self.run(Self.stage(), from: "<ceo@strict.example.net>", sender: "x@example.com", dkim: [("STRICT.example.net", "pass")])
        #expect(exact.decision.verdict == .continue)
        #expect(exact.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=strict.example.net"])
    }

    @Test func anUnalignedOrFailingSignatureDoesNotHelpButAnotherAlignedOneDoes() async throws {
        let unaligned = try await Self.run(Self.stage(), from: "<ceo@example.org>", sender: "x@example.com", dkim: [("example.com", "pass")])
        #expect(unaligned.decision.verdict == Self.rejected("example.org"))
        let failing = try await Self.run(Self.stage(), from: "<ceo@example.org>", sender: "x@example.com", dkim: [("example.org", "fail")])
        #expect(failing.decision.verdict == Self.rejected("example.org"))
        let both = try await Self.run(Self.stage(), from: "<ceo@example.org>", sender: "x@example.com",
                                      dkim: [("example.com", "pass"), ("example.org", "fail"), ("mail.example.org", "pass")])
        #expect(both.decision.verdict == .continue)
        #expect(both.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=example.org"])
    }

    @Test func dkimResultsRecordedByAnotherStageCount() async throws {
        // No dkim-verify stage: a milter before dmarc recorded dkim=pass header.d=example.org.
        let r = try await Self.run(Self.stage(), from: "<ceo@example.org>", sender: "x@example.com",
                                   dkim: [("example.org", "pass")], dkimAsRecordedResults: true)
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=example.org"])
    }

    @Test func withoutAnySPFOrDKIMResultItIsAFail() async throws {
        let r = try await Self.run(Self.stage(), from: "<ceo@example.org>", sender: "ceo@example.org", spf: nil)
        #expect(r.decision.verdict == Self.rejected("example.org"))
    }

    @Test func theNullSenderIsJudgedByTheHELOIdentity() async throws {
        let pass = try await Self.run(Self.stage(), from: "<postmaster@example.org>", sender: "", spf: "pass", helo: "mx1.example.org")
        #expect(pass.decision.verdict == .continue)
        #expect(pass.dmarc == ["dmarc=pass (p=reject dis=NONE) header.from=example.org"])
        let fail = try await Self.run(Self.stage(), from: "<postmaster@example.org>", sender: "", spf: "fail", helo: "mx1.example.org")
        #expect(fail.decision.verdict == Self.rejected("example.org"))
    }

    // MARK: The From field

    @Test func theAuthorDomainIsLowercased() async throws {
        let r = try await Self.run(Self.stage(), from: "CEO <ceo@EXAMPLE.Org>")
        #expect(r.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=example.org"])
    }

    @Test func anInternationalizedAuthorDomainIsLookedUpInItsASCIIForm() async throws {
        let resolver = RecordingResolver(zone: Self.zone())
        let r = try await Self.run(Self.stage(resolver: resolver), from: "<ceo@Bücher.example.com>")
        #expect(r.decision.verdict == Self.rejected("xn--bcher-kva.example.com"))
        #expect(r.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=xn--bcher-kva.example.com"])
        #expect(resolver.asked.all == ["_dmarc.xn--bcher-kva.example.com"])
    }

    @Test func whiteSpaceAroundTheVersionTagsEqualsSignIsAllowed() async throws {
        // RFC 7489 6.4: dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31.
        let r = try await Self.run(Self.stage(), from: "<a@spaced.example.com>")
        #expect(r.decision.verdict == Self.rejected("spaced.example.com"))
        #expect(r.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=spaced.example.com"])
    }

    @Test func severalAddressesOfOneDomainAreEvaluated() async throws {
        let r = try await Self.run(Self.stage(), from: "a@example.org, B <b@example.org>")
        #expect(r.decision.verdict == Self.rejected("example.org"))
    }

    @Test func severalAddressesOfOneDomainInAnotherCaseAreStillOneDomain() async throws {
        // Domain names compare case-insensitively: EXAMPLE.org and example.org are one author
        // domain, and the stage lowercases it anyway once it has decided there is one.
        let r = try await Self.run(Self.stage(), from: "a@EXAMPLE.org, b@example.org")
        #expect(r.decision.verdict == Self.rejected("example.org"))
        #expect(r.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=example.org"])
    }

    @Test func addressesOfSeveralDomainsArePermerror() async throws {
        let r = try await Self.run(Self.stage(), from: "a@example.org, b@example.net")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=permerror (no single RFC5322.From domain)"])
        #expect(r.evaluation == nil)
    }

    @Test func twoFromFieldsArePermerror() async throws {
        let r = try await Self.run(Self.stage(), from: ["a@example.org", "a@example.org"])
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=permerror (no single RFC5322.From domain)"])
    }

    @Test func noFromFieldOrNoAddressIsPermerror() async throws {
        let none = try await Self.run(Self.stage(), from: [])
        #expect(none.decision.verdict == .continue)
        #expect(none.dmarc == ["dmarc=permerror (no single RFC5322.From domain)"])
        let empty = try await Self.run(Self.stage(), from: "undisclosed-senders:;")
        #expect(empty.dmarc == ["dmarc=permerror (no single RFC5322.From domain)"])
        let local = try await Self.run(Self.stage(), from: "root")
        #expect(local.dmarc == ["dmarc=permerror (no single RFC5322.From domain)"])
    }

    @Test func displayNamesAndCommentsAreNotAddresses() async throws {
        let quoted = try await Self.run(Self.stage(), from: "\"boss@example.net\" <ceo@example.org>")
        #expect(quoted.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=example.org"])
        let escaped = try await Self.run(Self.stage(), from: #""a \" b@example.net, c" <ceo@example.org>"#)
        #expect(escaped.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=example.org"])
        let comment = try await Self.run(Self.stage(), from: "ceo@example.org (sent for boss@example.net)")
        #expect(comment.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=example.org"])
        let group = try await Self.run(Self.stage(), from: "Board: ceo@example.org;")
        #expect(group.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=example.org"])
    }

    // MARK: No record, bad records, DNS errors

    @Test func noRecordAnywhereIsNone() async throws {
        let resolver = RecordingResolver(zone: Self.zone())
        let r = try await Self.run(Self.stage(resolver: resolver), from: "<a@nodmarc.example.com>")
        #expect(r.decision == StageDecision())
        #expect(r.dmarc == ["dmarc=none header.from=nodmarc.example.com"])
        #expect(r.evaluation == DMARCStage.Evaluation(result: "none", fromDomain: "nodmarc.example.com", policy: nil, disposition: "none"))
        #expect(resolver.asked.all == ["_dmarc.nodmarc.example.com", "_dmarc.example.com"])
    }

    @Test func recordsThatAreNotDMARC1AreNoRecord() async throws {
        for domain in ["v10.example.com", "nov.example.com"] {
            let r = try await Self.run(Self.stage(), from: "<a@\(domain)>")
            #expect(r.decision.verdict == .continue)
            #expect(r.dmarc == ["dmarc=none header.from=\(domain)"])
        }
    }

    @Test func twoRecordsAreNoRecord() async throws {
        let r = try await Self.run(Self.stage(), from: "<a@two.example.com>")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=none header.from=two.example.com"])
    }

    @Test func twoRecordsAtTheFromDomainEndPolicyDiscovery() async throws {
        // RFC 7489 6.6.3: only an empty set at the From domain sends the receiver to the
        // organizational domain; with several records "policy discovery terminates and DMARC
        // processing is not applied". _dmarc.two.example.org has two records (both p=none);
        // _dmarc.example.org says sp=quarantine.
        let resolver = RecordingResolver(zone: Self.zone())
        let r = try await Self.run(Self.stage(resolver: resolver), from: "<a@two.example.org>")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=none header.from=two.example.org"])
        #expect(resolver.asked.all == ["_dmarc.two.example.org"])
    }

    @Test func anInvalidRecordIsPermerrorAndNotEnforced() async throws {
        let r = try await Self.run(Self.stage(), from: "<a@bad.example.com>")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=permerror (p=invalid dis=NONE) header.from=bad.example.com"])
    }

    @Test func aDNSTimeoutIsTemperrorTaggedByDefault() async throws {
        let r = try await Self.run(Self.stage(), from: "<a@slow.example.com>")
        #expect(r.decision == StageDecision())
        #expect(r.dmarc == ["dmarc=temperror header.from=slow.example.com"])
        #expect(r.evaluation == nil)
    }

    @Test func aDNSTimeoutTempfailsWhenConfigured() async throws {
        let r = try await Self.run(Self.stage(["temperror": .string("tempfail")]), from: "<a@slow.example.com>")
        #expect(r.decision.verdict == .tempfail(451, "4.7.1", "DMARC policy of slow.example.com could not be fetched, try again later"))
        #expect(r.dmarc == ["dmarc=temperror header.from=slow.example.com"])
    }

    @Test func aServerFailureIsTemperrorAndTheOrganizationalDomainIsNotAsked() async throws {
        var resolver = RecordingResolver(zone: Self.zone())
        resolver.serverFailures = ["_dmarc.sub.example.org"]
        let r = try await Self.run(Self.stage(["temperror": .string("tempfail")], resolver: resolver), from: "<a@sub.example.org>")
        #expect(r.decision.verdict == .tempfail(451, "4.7.1", "DMARC policy of sub.example.org could not be fetched, try again later"))
        #expect(r.dmarc == ["dmarc=temperror header.from=sub.example.org"])
        #expect(resolver.asked.all == ["_dmarc.sub.example.org"])
    }

    @Test func aTimeoutAtTheOrganizationalDomainIsTemperror() async throws {
        let r = try await Self.run(Self.stage(), from: "<a@news.example.info>", sender: "a@news.example.info")
        #expect(r.decision.verdict == .continue)
        #expect(r.dmarc == ["dmarc=temperror header.from=news.example.info"])
    }

    // MARK: What the policies mean here

    @Test func rejectCanBeMappedToQuarantineOrTag() async throws {
        let q = try await Self.run(Self.stage(["reject": .string("quarantine")]), from: "<a@example.org>")
        #expect(q.decision.verdict == .quarantine(reason: "DMARC policy of example.org (p=reject)"))
        let tag = try await Self.run(Self.stage(["reject": .string("tag")]), from: "<a@example.org>")
        #expect(tag.decision.verdict == .continue)
        #expect(tag.dmarc == ["dmarc=fail (p=reject dis=REJECT) header.from=example.org"])
    }

    @Test func quarantineCanBeMappedToRejectOrTag() async throws {
        let reject = try await Self.run(Self.stage(["quarantine": .string("reject")]), from: "<a@quarantine.example.com>")
        #expect(reject.decision.verdict == Self.rejected("quarantine.example.com"))
        let tag = try await Self.run(Self.stage(["quarantine": .string("tag")]), from: "<a@quarantine.example.com>")
        #expect(tag.decision.verdict == .continue)
    }

    @Test(arguments: [
        ("reject", ConfigValue.string("discard"), #"must be one of "reject", "quarantine", "tag""#),
        ("quarantine", .string("tempfail"), #"must be one of "quarantine", "reject", "tag""#),
        ("temperror", .string("reject"), #"must be one of "tag", "tempfail""#),
        ("honor_pct", .string("yes"), "expected a boolean, found string"),
        ("public_suffix_list", .int(1), "expected a string, found integer"),
    ])
    func badOptionsAreConfigErrors(key: String, value: ConfigValue, message: String) throws {
        let error = #expect(throws: ConfigError.self) { try Self.stage([key: value]) }
        #expect(error?.key == "stage.\(key)")
        #expect(error?.message == message)
    }

    @Test func thePhaseIsEndOfMessageOnly() throws {
        let stage = try Self.stage()
        #expect(stage.phases == [.endOfMessage])
        #expect(stage.capabilities == [])
    }
}
