import Foundation
import SMTPCore
import SluicePipeline
import SluiceStageAPI
import SluiceStageTesting
@testable import SluiceStages
import Testing

/// `spam` through `StageHarness`, against a fake spamd (SPAMC/1.5 → SPAMD/1.1) or a fake
/// rspamd (HTTP `/checkv2`) on a loopback port, answering canned replies.
@Suite("SpamStage")
struct SpamStageTests {
    /// What the fake scanner was sent: the request head (through the empty line) and the message.
    struct Request: Sendable {
        var head: String
        var message: [UInt8]
        var headLines: [String] { head.components(separatedBy: "\r\n").filter { !$0.isEmpty } }
    }

    /// A fake scanner: reads one request (head, then as many octets as its Content-length says),
    /// keeps it, answers `reply` and closes, as spamd does.
    static func scanner(_ reply: String, requests: Captured<Request> = Captured()) throws -> LoopbackPeer {
        try LoopbackPeer { c in
            guard let head = c.read(through: "\r\n\r\n") else { return }
            let text = String(decoding: head, as: UTF8.self)
            let length = text.components(separatedBy: "\r\n")
                .first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            let message = c.read(exactly: length) ?? []
            requests.append(Request(head: text, message: message))
            c.write(reply)
        }
    }

    static func spamdReply(spam: Bool, score: String, required: String = "5.0", symbols: String = "") -> String {
        let body = symbols.isEmpty ? "" : symbols + "\r\n"
        return "SPAMD/1.1 0 EX_OK\r\nContent-length: \(body.utf8.count)\r\nSpam: \(spam ? "True" : "False") ; \(score) / \(required)\r\n\r\n\(body)"
    }

    static func rspamdReply(_ json: String, status: String = "200 OK") -> String {
        "HTTP/1.1 \(status)\r\nContent-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)"
    }

    static func stage(_ backend: String, _ extra: [String: ConfigValue] = [:]) throws -> SpamStage {
        var values: [String: ConfigValue] = ["backend": .string(backend), "timeout_ms": .int(5000)]
        values.merge(extra) { $1 }
        return try SpamStage(config: .testing(values), environment: .testing())
    }

    static func spamd(_ peer: LoopbackPeer, _ extra: [String: ConfigValue] = [:]) throws -> SpamStage {
        try stage("spamd://127.0.0.1:\(peer.port)", extra)
    }

    static let thresholds: [String: ConfigValue] = ["reject_score": .double(15), "quarantine_score": .double(8)]
    static let message = "From: a@example.org\nTo: user@example.test\nSubject: offer\n  folded\n\nHello.\n"
    static let messageBytes = Array("From: a@example.org\r\nTo: user@example.test\r\nSubject: offer\r\n  folded\r\n\r\nHello.\r\n".utf8)

    static func scan(_ stage: SpamStage, _ text: String = message) async throws -> StageHarness.MessageOutcome {
        var h = StageHarness(stage: stage, heloName: "client.example.org")
        _ = try await h.mailFrom("sender@example.org")
        return try await h.message(text, to: ["user@example.test"])
    }

    static func headerEdits(flag: String, score: String, status: String) -> [MessageEdit] {
        [
            .insertHeader(index: 0, name: "X-Spam-Flag", value: " \(flag)"),
            .insertHeader(index: 0, name: "X-Spam-Score", value: " \(score)"),
            .insertHeader(index: 0, name: "X-Spam-Status", value: status),
        ]
    }

    // MARK: spamd: scores and thresholds

    @Test func hamBelowTheThresholdsIsMarkedAndPasses() async throws {
        let requests = Captured<Request>()
        let peer = try Self.scanner(Self.spamdReply(spam: false, score: "1.2", symbols: "BAYES_00,HTML_MESSAGE"), requests: requests)
        let out = try await Self.scan(Self.spamd(peer, Self.thresholds))
        #expect(out.decision.verdict == .continue)
        #expect(out.decision.edits == Self.headerEdits(flag: "NO", score: "1.2", status: " No, score=1.2 required=5.0\r\n\ttests=BAYES_00,HTML_MESSAGE"))
        #expect(out.decision.note == "spamd://127.0.0.1:\(peer.port) score=1.2/5.0 symbols=BAYES_00,HTML_MESSAGE")
        #expect(out.text.hasPrefix(
            "X-Spam-Status: No, score=1.2 required=5.0\r\n\ttests=BAYES_00,HTML_MESSAGE\r\nX-Spam-Score: 1.2\r\nX-Spam-Flag: NO\r\nFrom: a@example.org\r\n"))
        // The request: SPAMC/1.5 SYMBOLS with the exact length of the message that follows.
        let request = try #require(requests.all.first)
        #expect(request.head == "SYMBOLS SPAMC/1.5\r\nContent-length: \(Self.messageBytes.count)\r\n\r\n")
        #expect(request.message == Self.messageBytes)
        #expect(peer.connections == 1)
    }

    @Test func spamBelowTheQuarantineScoreIsOnlyMarked() async throws {
        let peer = try Self.scanner(Self.spamdReply(spam: true, score: "6.0", symbols: "BAYES_80"))
        let out = try await Self.scan(Self.spamd(peer, Self.thresholds))
        #expect(out.decision.verdict == .continue)
        #expect(out.decision.edits == Self.headerEdits(flag: "YES", score: "6.0", status: " Yes, score=6.0 required=5.0\r\n\ttests=BAYES_80"))
        #expect(out.header("X-Spam-Flag") == ["YES"])
    }

    @Test func atOrAboveTheQuarantineScoreIsQuarantinedWithTheHeaders() async throws {
        for (score, shown) in [("8", "8.0"), ("9.46", "9.5"), ("14.9", "14.9")] {
            let peer = try Self.scanner(Self.spamdReply(spam: true, score: score, symbols: "BAYES_99,URIBL_BLACK"))
            let out = try await Self.scan(Self.spamd(peer, Self.thresholds))
            #expect(out.decision.verdict == .quarantine(reason: "spam score \(shown) >= 8.0"))
            #expect(out.decision.edits == Self.headerEdits(flag: "YES", score: shown, status: " Yes, score=\(shown) required=5.0\r\n\ttests=BAYES_99,URIBL_BLACK"))
        }
    }

    @Test func atOrAboveTheRejectScoreIsRejected() async throws {
        for (score, shown) in [("15", "15.0"), ("1000.04", "1000.0")] {
            let peer = try Self.scanner(Self.spamdReply(spam: true, score: score, symbols: "GTUBE"))
            let out = try await Self.scan(Self.spamd(peer, Self.thresholds))
            #expect(out.decision.verdict == .reject(550, "5.7.1", "Spam message rejected (score \(shown) >= 15.0)"))
            #expect(out.decision.edits.isEmpty)
            #expect(out.decision.note == "spamd://127.0.0.1:\(peer.port) score=\(shown)/5.0 symbols=GTUBE")
        }
    }

    @Test func withoutThresholdsSpamdsVerdictOnlyMarks() async throws {
        let peer = try Self.scanner(Self.spamdReply(spam: true, score: "999.0", symbols: "GTUBE"))
        let out = try await Self.scan(Self.spamd(peer))
        #expect(out.decision.verdict == .continue)
        #expect(out.header("X-Spam-Status") == ["Yes, score=999.0 required=5.0\ttests=GTUBE"])
    }

    @Test func aNegativeScoreAndNoSymbols() async throws {
        let peer = try Self.scanner(Self.spamdReply(spam: false, score: "-1.25", required: "5"))
        let out = try await Self.scan(Self.spamd(peer, Self.thresholds))
        #expect(out.decision.verdict == .continue)
        #expect(out.decision.edits == Self.headerEdits(flag: "NO", score: "-1.3", status: " No, score=-1.3 required=5.0\r\n\ttests=none"))
    }

    // MARK: spamd: the fields and the request

    @Test func addHeadersFalseAddsNothing() async throws {
        let peer = try Self.scanner(Self.spamdReply(spam: true, score: "9.0", symbols: "X"))
        let out = try await Self.scan(Self.spamd(peer, Self.thresholds.merging(["add_headers": .bool(false)]) { $1 }))
        #expect(out.decision.verdict == .quarantine(reason: "spam score 9.0 >= 8.0"))
        #expect(out.decision.edits.isEmpty)
    }

    @Test func customHeaderNames() async throws {
        let peer = try Self.scanner(Self.spamdReply(spam: false, score: "0.1", symbols: "A"))
        let stage = try Self.spamd(peer, ["status_header": .string("X-Scan"), "score_header": .string("X-Scan-Score"), "flag_header": .string("X-Scan-Flag")])
        let out = try await Self.scan(stage)
        #expect(out.headers.prefix(3).map(\.name) == ["X-Scan", "X-Scan-Score", "X-Scan-Flag"])
        #expect(out.header("X-Spam-Status") == [])
    }

    @Test func theUserKeyIsSent() async throws {
        let requests = Captured<Request>()
        let peer = try Self.scanner(Self.spamdReply(spam: false, score: "0.0"), requests: requests)
        _ = try await Self.scan(Self.spamd(peer, ["user": .string("alice")]))
        #expect(requests.all.first?.head == "SYMBOLS SPAMC/1.5\r\nContent-length: \(Self.messageBytes.count)\r\nUser: alice\r\n\r\n")
    }

    @Test func manySymbolsAreFoldedAndBadSymbolsDropped() async throws {
        let names = (1...30).map { "SYMBOL_NUMBER_\($0)" }
        let reply = names.joined(separator: ",") + ",bad symbol!,X-Injected: yes\r\nBcc: a@b,\u{00e9}t\u{00e9},OK.2-x"
        let peer = try Self.scanner(Self.spamdReply(spam: false, score: "0.5", symbols: reply))
        let out = try await Self.scan(Self.spamd(peer))
        let status = try #require(out.headers.first { $0.name == "X-Spam-Status" })
        let lines = "X-Spam-Status:\(status.value)".components(separatedBy: "\r\n")
        #expect(lines.count > 2)
        #expect(lines.allSatisfy { $0.utf8.count <= 78 }, "\(lines)")
        #expect(lines.dropFirst().allSatisfy { $0.hasPrefix("\t") })
        let tests = status.unfoldedValue.components(separatedBy: "tests=").last?.replacingOccurrences(of: "\t", with: "")
        #expect(tests == (names + ["OK.2-x"]).joined(separator: ","))
        #expect(!out.text.contains("\r\nBcc:") && !out.text.contains("\r\nX-Injected:"))
    }

    @Test func aMessageOverMaxScanBytesIsNotScanned() async throws {
        let peer = try Self.scanner(Self.spamdReply(spam: true, score: "99.0"))
        let out = try await Self.scan(Self.spamd(peer, Self.thresholds.merging(["max_scan_bytes": .int(40)]) { $1 }))
        #expect(out.decision.verdict == .continue)
        #expect(out.decision.edits == [.insertHeader(index: 0, name: "X-Spam-Status", value: " No, not scanned (size \(Self.messageBytes.count) > max_scan_bytes 40)")])
        #expect(peer.connections == 0)
    }

    // MARK: spamd: bad replies and dead scanners

    static let badReplies: [(name: String, reply: String, error: String)] = [
        ("not spamd", "HTTP/1.0 400 Bad Request\r\n\r\n", "spamd: not a SPAMD reply: \"HTTP/1.0 400 Bad Request\\r\\n\\r\\n\""),
        ("nothing", "", "spamd: not a SPAMD reply: \"\""),
        ("an error status", "SPAMD/1.0 76 Bad header line: (Content-Length mismatch)\r\n\r\n", "spamd: SPAMD/1.0 76 Bad header line: (Content-Length mismatch)"),
        ("cut after the status", "SPAMD/1.1 0 EX_OK\r\nContent-len", "spamd: no Spam header in the reply"),
        ("cut in the Spam header", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 15", "spamd: malformed \"Spam: True ; 15\""),
        ("a score that is no number", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\n", "spamd: malformed \"Spam: True ; lots / 5.0\""),
        ("no semicolon", "SPAMD/1.1 0 EX_OK\r\nSpam: True 15.0 / 5.0\r\n\r\n", "spamd: malformed \"Spam: True 15.0 / 5.0\""),
    ]

    @Test(arguments: badReplies)
    func aGarbledReplyIsAStageFailure(name: String, reply: String, error: String) async throws {
        let peer = try Self.scanner(reply)
        let stage = try Self.spamd(peer, Self.thresholds)
        let thrown = await #expect(throws: (any Error).self) { _ = try await Self.scan(stage) }
        #expect(thrown.map { "\($0)" } == error)
    }

    @Test func connectionRefusedIsAStageFailure() async throws {
        let refusing = RefusingPort()
        let stage = try Self.stage("spamd://127.0.0.1:\(refusing.port)", Self.thresholds)
        await #expect(throws: (any Error).self) { _ = try await Self.scan(stage) }
        #expect(refusing.port > 0)  // kept bound until here
    }

    @Test func aSilentScannerIsGivenUpWithinTheTimeout() async throws {
        let peer = try LoopbackPeer { c in
            _ = c.read(through: "\r\n\r\n")
            c.drain()  // never answers; returns when the stage hangs up
        }
        let stage = try Self.spamd(peer, ["timeout_ms": .int(200)])
        let start = ContinuousClock.now
        await #expect(throws: (any Error).self) { _ = try await Self.scan(stage) }
        // Without the timeout the scan would wait for ever; the bound leaves room for a loaded machine.
        #expect(ContinuousClock.now - start < .seconds(10))
    }

    /// on_error is applied by the chain, around the stage, as in the gateway.
    static func throughTheChain(_ stage: SpamStage, onError: FailurePolicy) async -> StageChain.EndOfMessageResult {
        let chain = try! StageChain([StageEntry(name: "spam", kind: "spam", stage: stage, timeout: .seconds(5), onError: onError)])
        let bytes = Self.messageBytes
        let section = HeaderSection.parse(bytes, atEnd: true)
        let body = Array(bytes[section.bodyOffset...])
        let session = SessionInfo(id: "T", clientAddress: "192.0.2.10", clientPort: 4000, serverAddress: "198.51.100.1", serverPort: 25, serverHostname: "mx.example.test")
        let sender = Mailbox(path: "sender@example.org").map(ReversePath.mailbox) ?? .null
        let tx = TransactionInfo(queueID: "Q1", sender: sender)
        return await chain.endOfMessage(
            draft: MessageDraft(headers: section.fields, sender: sender, recipients: []), receivedSize: bytes.count,
            body: { _ in MessageBody(bytes: body) }, session: session, transaction: tx
        )
    }

    @Test(arguments: [
        (FailurePolicy.accept, StageVerdict.continue),
        (.tempfail, .tempfail(451, "4.3.0", "Error: temporary failure in stage spam")),
        (.reject, .reject(554, "5.3.0", "Error: stage spam failed")),
    ])
    func onErrorDecidesForADeadScanner(policy: FailurePolicy, expected: StageVerdict) async throws {
        let refusing = RefusingPort()
        let stage = try Self.stage("spamd://127.0.0.1:\(refusing.port)", Self.thresholds)
        let result = await Self.throughTheChain(stage, onError: policy)
        #expect(refusing.port > 0)  // kept bound until here
        #expect(result.verdict == expected)
        #expect(result.draft.headers.map(\.name) == ["From", "To", "Subject"])
        let outcome = try #require(result.trace.first?.outcome)
        #expect(outcome.hasPrefix("failed: "))
        #expect(outcome.hasSuffix("-> \(expected)"))
    }

    @Test func onErrorDecidesForAGarbledReply() async throws {
        let peer = try Self.scanner("SPAMD/1.1 0 EX_OK\r\nSpam: maybe\r\n\r\n")
        let result = await Self.throughTheChain(try Self.spamd(peer, Self.thresholds), onError: .accept)
        #expect(result.verdict == .continue)
        #expect(result.trace.first?.outcome == "failed: spamd: malformed \"Spam: maybe\" -> continue")
        #expect(!result.draft.headers.contains { $0.name.hasPrefix("X-Spam") })
    }

    @Test func aHugeScoreFromTheScannerIsTakenAsItIs() throws {
        // What makes the next test reachable: any number spamd (or rspamd) sends is the score.
        let v = try SpamScanner.parseSpamd(Array("SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1e19 / 5.0\r\n\r\n".utf8))
        #expect(v.score == 1e19)
        #expect(v.isSpam)
    }

    @Test func aHugeScoreDoesNotCrashTheGateway() async {
        // A score past Int.max / 10 once trapped in format() (Int(Double) overflow): a scanner's
        // "Spam: True ; 1e19 / 5.0" (or rspamd's "score": 1e19) took the process down. Run in a
        // child process, so a regression fails this test instead of the whole run.
        await #expect(processExitsWith: .success) {
            let stage = try SpamStage(config: .testing(["backend": .string("spamd://127.0.0.1:783"), "reject_score": .double(15)]), environment: .testing())
            let verdict = try SpamScanner.parseSpamd(Array("SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1e19 / 5.0\r\n\r\nGTUBE\r\n".utf8))
            let decision = stage.decide(verdict)
            guard case .reject = decision.verdict else { exit(1) }
        }
    }

    // MARK: rspamd

    @Test func rspamdGetsTheEnvelopeAndItsScoreIsUsed() async throws {
        let requests = Captured<Request>()
        let json = #"{"is_skipped":false,"score":3.5,"required_score":15.0,"action":"no action","symbols":{"R_SPF_ALLOW":{"score":-0.2},"BAYES_HAM":{"score":-3}}}"#
        let peer = try Self.scanner(Self.rspamdReply(json), requests: requests)
        let out = try await Self.scan(Self.stage("rspamd://127.0.0.1:\(peer.port)", Self.thresholds))
        #expect(out.decision.verdict == .continue)
        #expect(out.decision.edits == Self.headerEdits(flag: "NO", score: "3.5", status: " No, score=3.5 required=15.0\r\n\ttests=BAYES_HAM,R_SPF_ALLOW"))
        #expect(out.decision.note == "rspamd://127.0.0.1:\(peer.port) score=3.5/15.0 action=no action symbols=BAYES_HAM,R_SPF_ALLOW")
        let request = try #require(requests.all.first)
        #expect(request.headLines == [
            "POST /checkv2 HTTP/1.1", "Host: 127.0.0.1", "Connection: close", "Content-Length: \(Self.messageBytes.count)",
            "IP: 192.0.2.10", "From: sender@example.org", "Queue-Id: TESTQ1", "MTA-Name: mx.example.test",
            "Helo: client.example.org", "Rcpt: user@example.test",
        ])
        #expect(request.message == Self.messageBytes)
    }

    @Test(arguments: [
        ("reject", StageVerdict.reject(550, "5.7.1", "Spam message rejected (score 9.0)")),
        ("soft reject", .tempfail(451, "4.7.1", "Try again later (score 9.0)")),
        ("greylist", .tempfail(451, "4.7.1", "Greylisted, try again later")),
    ])
    func rspamdsActionIsFollowedWhenAskedTo(action: String, expected: StageVerdict) async throws {
        let peer = try Self.scanner(Self.rspamdReply(#"{"score":9.0,"required_score":15.0,"action":"\#(action)","symbols":{}}"#))
        let out = try await Self.scan(Self.stage("rspamd://127.0.0.1:\(peer.port)", ["use_backend_action": .bool(true)]))
        #expect(out.decision.verdict == expected)
        #expect(out.decision.edits.isEmpty)
    }

    @Test func rspamdsAddHeaderActionMarksAsSpam() async throws {
        let peer = try Self.scanner(Self.rspamdReply(#"{"score":6.0,"required_score":15.0,"action":"add header","symbols":{"X":{}}}"#))
        let withAction = try await Self.scan(Self.stage("rspamd://127.0.0.1:\(peer.port)", ["use_backend_action": .bool(true), "quarantine_score": .double(8)]))
        #expect(withAction.decision.verdict == .continue)
        #expect(withAction.header("X-Spam-Flag") == ["YES"])
    }

    @Test func rspamdsRejectActionIsOnlyAMarkWithoutUseBackendAction() async throws {
        let peer = try Self.scanner(Self.rspamdReply(#"{"score":9.0,"required_score":15.0,"action":"reject","symbols":{}}"#))
        let out = try await Self.scan(Self.stage("rspamd://127.0.0.1:\(peer.port)", ["reject_score": .double(20)]))
        #expect(out.decision.verdict == .continue)
        #expect(out.header("X-Spam-Flag") == ["YES"])
        #expect(out.header("X-Spam-Status") == ["Yes, score=9.0 required=15.0\ttests=none"])
    }

    @Test(arguments: [
        ("a server error", SpamStageTests.rspamdReply("{}", status: "500 Internal Server Error"), "rspamd: HTTP/1.1 500 Internal Server Error"),
        ("no JSON", SpamStageTests.rspamdReply("<html>oops</html>"), "rspamd: the reply is not a scan result"),
        ("JSON without a score", SpamStageTests.rspamdReply(#"{"action":"reject"}"#), "rspamd: the reply is not a scan result"),
        ("a cut head", "HTTP/1.1 200 OK\r\nContent-Le", "rspamd: incomplete HTTP reply"),
    ])
    func aBadRspamdReplyIsAStageFailure(name: String, reply: String, error: String) async throws {
        let peer = try Self.scanner(reply)
        let stage = try Self.stage("rspamd://127.0.0.1:\(peer.port)")
        let thrown = await #expect(throws: (any Error).self) { _ = try await Self.scan(stage) }
        #expect(thrown.map { "\($0)" } == error)
    }

    // MARK: Configuration

    @Test func backendAddresses() {
        #expect(SpamBackend("spamd://127.0.0.1") == .spamd(host: "127.0.0.1", port: 783))
        #expect(SpamBackend("spamd://scanner.example:7830/") == .spamd(host: "scanner.example", port: 7830))
        #expect(SpamBackend("rspamd://localhost") == .rspamd(host: "localhost", port: 11333))
        #expect(SpamBackend("rspamd://[::1]:11334") == .rspamd(host: "::1", port: 11334))
        for bad in ["http://127.0.0.1", "spamd://", "spamd://:783", "spamd://h:0", "spamd://h:65536", "spamd://h:x", "rspamd://[::1", "rspamd://[::1]x"] {
            #expect(SpamBackend(bad) == nil, "\(bad)")
        }
    }

    @Test(arguments: [
        ([String: ConfigValue](), "stage.backend", "missing: spamd://host:port or rspamd://host:port"),
        (["backend": .string("http://127.0.0.1:783")], "stage.backend", "'http://127.0.0.1:783' is not spamd://host[:port] or rspamd://host[:port]"),
        (["backend": .string("spamd://h"), "reject_score": .double(5), "quarantine_score": .double(6)], "stage.quarantine_score", "above reject_score: it could never apply"),
        (["backend": .string("spamd://h"), "reject_score": .string("high")], "stage.reject_score", "expected a number, found string"),
        (["backend": .string("spamd://h"), "max_scan_bytes": .int(0)], "stage.max_scan_bytes", "must be between 1 and 1073741824"),
        (["backend": .string("spamd://h"), "max_concurrency": .int(0)], "stage.max_concurrency", "must be between 1 and 1024"),
    ])
    func configurationErrors(values: [String: ConfigValue], key: String, message: String) throws {
        let error = #expect(throws: ConfigError.self) { try SpamStage(config: .testing(values), environment: .testing()) }
        #expect(error?.key == key)
        #expect(error?.message == message)
    }

    @Test func integerThresholdsAreAccepted() throws {
        let stage = try Self.stage("spamd://h", ["reject_score": .int(10), "quarantine_score": .int(10)])
        #expect(stage.rejectScore == 10)
        #expect(stage.quarantineScore == 10)
        #expect(stage.phases == [.endOfMessage])
        #expect(stage.capabilities == [.readsBody, .addsHeaders])
    }
}
