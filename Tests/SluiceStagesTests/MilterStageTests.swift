import Foundation
import SMTPCore
import SluiceStageAPI
import SluiceStageTesting
@testable import SluiceStages
import Testing

/// `milter` through `StageHarness`, against a scripted fake milter on a loopback port that
/// speaks the wire protocol (4-octet length, command octet, data): it answers option
/// negotiation as told, every command with the frames its script gives (continue by default),
/// and keeps every frame it was sent.
@Suite("MilterStage")
struct MilterStageTests {
    struct Frame: Sendable, Equatable, CustomStringConvertible {
        var command: Character
        var data: [UInt8]
        var fields: [String] { Milter.fields(data[...]) }
        var description: String { "\(command) \(fields)" }
    }

    /// What the fake does with a command: answer with frames, say nothing, or hang up.
    enum Answer: Sendable {
        case frames([[UInt8]])
        case silence
        case hangUp
    }

    final class FakeMilter: Sendable {
        let received: Captured<Frame>
        let peer: LoopbackPeer

        /// - Parameters:
        ///   - negotiation: the SMFIC_OPTNEG reply's data (default: version 6, every action, no flags).
        ///   - script: the answer to a command (macros, ABORT and QUIT never get one); nil: continue.
        init(negotiation: [UInt8] = MilterStageTests.negotiation(), script: @escaping @Sendable (Frame) -> Answer? = { _ in nil }) throws {
            let received = Captured<Frame>()
            self.received = received
            peer = try LoopbackPeer { c in
                while let head = c.read(exactly: 4) {
                    let length = Int(head[0]) << 24 | Int(head[1]) << 16 | Int(head[2]) << 8 | Int(head[3])
                    guard length >= 1, let payload = c.read(exactly: length) else { return }
                    let frame = Frame(command: Character(Unicode.Scalar(payload[0])), data: Array(payload[1...]))
                    received.append(frame)
                    switch frame.command {
                    case "O": c.write(MilterStageTests.frame("O", negotiation))
                    case "D", "A": continue
                    case "Q": return
                    default:
                        switch script(frame) ?? .frames([MilterStageTests.frame("c")]) {
                        case .frames(let frames): for f in frames { c.write(f) }
                        case .silence: continue
                        case .hangUp: return
                        }
                    }
                }
            }
        }

        var socket: String { "inet:127.0.0.1:\(peer.port)" }
        /// The commands received, in order, as one string (`"ODCHDM..."`).
        var commands: String { String(received.all.map(\.command)) }
        func frames(_ command: Character) -> [Frame] { received.all.filter { $0.command == command } }
    }

    // MARK: Wire helpers

    static func frame(_ command: Character, _ data: [UInt8] = []) -> [UInt8] {
        Milter.frame(UInt8(ascii: command.unicodeScalars.first!), data)
    }

    static func strings(_ s: String...) -> [UInt8] { Milter.cStrings(s) }

    static func negotiation(version: UInt32 = 6, actions: UInt32 = 0x1FF, flags: UInt32 = 0, macros: [(UInt32, String)] = []) -> [UInt8] {
        var data = Milter.uint32(version) + Milter.uint32(actions) + Milter.uint32(flags)
        for (stage, names) in macros { data += Milter.uint32(stage) + Array(names.utf8) + [0] }
        return data
    }

    static func stage(_ socket: String, _ extra: [String: ConfigValue] = [:]) throws -> MilterStage {
        var values: [String: ConfigValue] = [
            "socket": .string(socket), "connect_timeout_ms": .int(2000), "command_timeout_ms": .int(2000), "content_timeout_ms": .int(2000),
        ]
        values.merge(extra) { $1 }
        return try MilterStage(config: .testing(values), environment: .testing())
    }

    static let message = "Subject: hi\nFrom: a@example.org\nX-Remove: me\n\nbody\n"

    /// connect, HELO, MAIL, RCPT: the four verdicts.
    static func open(_ h: inout StageHarness) async throws -> [StageVerdict] {
        [
            try await h.connect(), try await h.helo("client.example.org"),
            try await h.mailFrom("sender@example.org"), try await h.rcptTo("user@example.test"),
        ]
    }

    static let failed = StageVerdict.tempfail(451, "4.7.1", "Service unavailable - try again later")

    // MARK: A whole session

    @Test func aWholeSessionWhereTheMilterContinues() async throws {
        let milter = try FakeMilter()
        var h = StageHarness(stage: try Self.stage(milter.socket))
        #expect(try await Self.open(&h) == [.continue, .continue, .continue, .continue])
        let out = try await h.message(Self.message)
        #expect(out.dataVerdict == .continue)
        #expect(out.decision == StageDecision())
        await h.disconnect()
        await milter.peer.handlersFinished()

        #expect(milter.commands == "ODCHDMDRDTLLLNBDEQ")
        let received = milter.received.all
        // Option negotiation: version 6, every action, every step but RCPT_REJ.
        #expect(received[0].data == Milter.uint32(6) + Milter.uint32(0x1FF) + Milter.uint32(0x1FF7FF))
        // Connect macros (Postfix's defaults), then the client: "[address]", family, port, address.
        #expect(received[1].data == [UInt8(ascii: "C")] + Self.strings(
            "j", "mx.example.test", "{daemon_name}", "sluice", "{daemon_addr}", "198.51.100.1", "v", "Sluice", "_", "unknown [192.0.2.10]"))
        #expect(received[2].data == Self.strings("[192.0.2.10]") + [UInt8(ascii: "4"), 0x9C, 0x40] + Self.strings("192.0.2.10"))
        #expect(milter.frames("H").map(\.fields) == [["client.example.org"]])
        #expect(milter.frames("M").map(\.fields) == [["<sender@example.org>"]])
        #expect(milter.frames("R").map(\.fields) == [["<user@example.test>"]])
        let macros = milter.frames("D").map(\.fields)
        #expect(macros[1] == ["Mi", "TESTQ1", "{mail_mailer}", "smtp", "{mail_host}", "example.org", "{mail_addr}", "sender@example.org"])
        #expect(macros[2] == ["R{rcpt_mailer}", "smtp", "{rcpt_host}", "example.test", "{rcpt_addr}", "user@example.test"])
        // Header values without the space after the colon (no HDR_LEADSPC); the body as sent.
        #expect(milter.frames("L").map(\.fields) == [["Subject", "hi"], ["From", "a@example.org"], ["X-Remove", "me"]])
        #expect(milter.frames("B").map(\.data) == [Array("body\r\n".utf8)])
    }

    @Test func acceptAtConnectEndsTheMiltersPartForTheSession() async throws {
        let milter = try FakeMilter { $0.command == "C" ? .frames([Self.frame("a")]) : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        #expect(try await Self.open(&h) == [.continue, .continue, .continue, .continue])
        let out = try await h.message(Self.message)
        #expect(out.decision == StageDecision())
        await h.disconnect()
        await milter.peer.handlersFinished()
        #expect(milter.commands == "ODCQ")
    }

    @Test func acceptAtMailEndsItForThatTransactionOnly() async throws {
        let accepted = Captured<Int>()
        let milter = try FakeMilter { frame in
            guard frame.command == "M" else { return nil }
            accepted.append(1)
            return accepted.all.count == 1 ? .frames([Self.frame("a")]) : nil
        }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        #expect(try await h.message(Self.message).decision == StageDecision())
        _ = try await h.mailFrom("second@example.org")
        _ = try await h.rcptTo("user@example.test")
        _ = try await h.message(Self.message)
        await h.disconnect()
        await milter.peer.handlersFinished()
        // First transaction: nothing after MAIL; the second one gets everything.
        #expect(milter.commands == "ODCHDM" + "DMDRDTLLLNBDE" + "Q")
    }

    // MARK: Refusals

    @Test func rejectAtRcptRefusesThatRecipient() async throws {
        let milter = try FakeMilter { $0.command == "R" ? .frames([Self.frame("r")]) : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        #expect(try await Self.open(&h) == [.continue, .continue, .continue, .reject(550, "5.7.1", "Command rejected")])
    }

    @Test func tempfailAtMail() async throws {
        let milter = try FakeMilter { $0.command == "M" ? .frames([Self.frame("t")]) : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        #expect(try await Self.open(&h)[2] == .tempfail(451, "4.7.1", "Service unavailable - try again later"))
    }

    @Test(arguments: [
        ("554 5.7.1 Sender blocked", StageVerdict.reject(554, "5.7.1", "Sender blocked")),
        ("550 No enhanced code", .reject(SMTPReply(550, nil, "No enhanced code"))),
        ("421 4.7.0 Too busy", .tempfail(421, "4.7.0", "Too busy")),
        ("550-5.7.1 first line\r\n550 5.7.1 second line", .reject(SMTPReply(550, EnhancedStatusCode("5.7.1"), ["first line", "second line"]))),
        ("550 4.7.1 wrong class", .reject(SMTPReply(550, nil, "4.7.1 wrong class"))),
    ])
    func customRepliesAtMail(reply: String, expected: StageVerdict) async throws {
        let milter = try FakeMilter { $0.command == "M" ? .frames([Self.frame("y", Self.strings(reply))]) : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        #expect(try await Self.open(&h)[2] == expected)
    }

    @Test func refusalsAtEndOfMessageDropTheEditsBeforeThem() async throws {
        for (answer, expected) in [
            ("t", StageVerdict.tempfail(451, "4.7.1", "Service unavailable - try again later")),
            ("r", .reject(550, "5.7.1", "Command rejected")),
            ("d", .discard),
        ] {
            let milter = try FakeMilter { frame in
                frame.command == "E" ? .frames([Self.frame("h", Self.strings("X-Milter", "yes")), Self.frame(Character(answer))]) : nil
            }
            var h = StageHarness(stage: try Self.stage(milter.socket))
            _ = try await Self.open(&h)
            let out = try await h.message(Self.message)
            #expect(out.decision == StageDecision(expected), "\(answer)")
        }
    }

    @Test func aCustomReplyAtEndOfMessage() async throws {
        let milter = try FakeMilter { $0.command == "E" ? .frames([Self.frame("y", Self.strings("550 5.7.0 Virus found: EICAR"))]) : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        #expect(try await h.message(Self.message).decision.verdict == .reject(550, "5.7.0", "Virus found: EICAR"))
    }

    @Test func rejectWhileTheHeadersStream() async throws {
        let milter = try FakeMilter { frame in
            frame.command == "L" && frame.fields.first == "From" ? .frames([Self.frame("r")]) : nil
        }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        let out = try await h.message(Self.message)
        #expect(out.dataVerdict == .reject(550, "5.7.1", "Command rejected"))
        // The refusal ended the data phase: no further header, no body, no end of message.
        #expect(milter.commands == "ODCHDMDRDTLL")
    }

    @Test func quarantine() async throws {
        let milter = try FakeMilter { frame in
            frame.command == "E" ? .frames([Self.frame("h", Self.strings("X-Held", "1")), Self.frame("q", Self.strings("held for review")), Self.frame("c")]) : nil
        }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        let out = try await h.message(Self.message)
        #expect(out.decision.verdict == .quarantine(reason: "milter milter: held for review"))
        #expect(out.decision.edits == [.addHeader(.make(name: "X-Held", value: "1"))])
    }

    // MARK: Edits at end of message

    @Test func headerEdits() async throws {
        let milter = try FakeMilter { frame in
            guard frame.command == "E" else { return nil }
            return .frames([
                Self.frame("p"),  // progress: still working
                Self.frame("h", Self.strings("X-Milter", "scanned")),
                Self.frame("i", Milter.uint32(0) + Self.strings("X-First", "top")),
                Self.frame("m", Milter.uint32(1) + Self.strings("Subject", "changed")),
                Self.frame("m", Milter.uint32(1) + Self.strings("X-Remove", "")),
                Self.frame("h", Self.strings("X-Folded", "one\n\ttwo")),
                Self.frame("a"),
            ])
        }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        let out = try await h.message(Self.message)
        #expect(out.decision.verdict == .continue)
        #expect(out.decision.edits == [
            .addHeader(HeaderField(name: "X-Milter", value: " scanned")),
            .insertHeader(index: 0, HeaderField(name: "X-First", value: " top")),
            .changeHeader(occurrence: 1, HeaderField(name: "Subject", value: " changed")),
            .deleteHeader(name: "X-Remove", occurrence: 1),
            .addHeader(HeaderField(name: "X-Folded", value: " one\r\n\ttwo")),
        ])
        #expect(out.text == "X-First: top\r\nSubject: changed\r\nFrom: a@example.org\r\nX-Milter: scanned\r\nX-Folded: one\r\n\ttwo\r\n\r\nbody\r\n")
    }

    @Test func envelopeEditsAndABodyReplacement() async throws {
        let directory = FileManager.default.temporaryDirectory.path
        let milter = try FakeMilter { frame in
            guard frame.command == "E" else { return nil }
            return .frames([
                Self.frame("+", Self.strings("<added@example.test>")),
                Self.frame("2", Self.strings("<dsn@example.test>", "NOTIFY=NEVER")),
                Self.frame("-", Self.strings("<user@example.test>")),
                Self.frame("e", Self.strings("<new-sender@example.org>", "SIZE=100")),
                Self.frame("b", Array("new ".utf8)),
                Self.frame("b", Array("body\r\n".utf8)),
                Self.frame("c"),
            ])
        }
        var h = StageHarness(stage: try Self.stage(milter.socket, ["temporary_directory": .string(directory)]))
        _ = try await Self.open(&h)
        let out = try await h.message(Self.message)
        let edits = out.decision.edits
        try #require(edits.count == 5)
        #expect(edits[0] == .addRecipient(try #require(Mailbox(path: "added@example.test")), parameters: []))
        #expect(edits[1] == .addRecipient(try #require(Mailbox(path: "dsn@example.test")), parameters: [ESMTPParameter(keyword: "NOTIFY", value: "NEVER")]))
        #expect(edits[2] == .deleteRecipient(try #require(Mailbox(path: "user@example.test"))))
        #expect(edits[3] == .changeSender(.mailbox(try #require(Mailbox(path: "new-sender@example.org"))), parameters: [ESMTPParameter(keyword: "SIZE", value: "100")]))
        guard case .replaceBody(let path) = edits[4] else {
            Issue.record("no body replacement: \(edits[4])")
            return
        }
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(path.hasPrefix(directory + "/sluice-milter-body-"))
        #expect(out.body == Array("new body\r\n".utf8))
        #expect(out.recipients.map(\.description) == ["<added@example.test>", "<dsn@example.test>"])
        #expect(out.sender == .mailbox(try #require(Mailbox(path: "new-sender@example.org"))))
    }

    // MARK: Negotiated steps and macros

    @Test func negotiatedFlagsSkipStepsRepliesAndKeepTheLeadingSpace() async throws {
        // noHelo, noReplyHeader, noBody, headerLeadingSpace
        let flags: UInt32 = 0x2 | 0x80 | 0x10 | 0x100000
        let milter = try FakeMilter(negotiation: Self.negotiation(flags: flags)) { frame in
            if frame.command == "L" { return .silence }
            return frame.command == "E" ? .frames([Self.frame("h", Self.strings("X-Exact", "no-space")), Self.frame("h", Self.strings("X-Spaced", " spaced")), Self.frame("c")]) : nil
        }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        #expect(try await Self.open(&h) == [.continue, .continue, .continue, .continue])
        let out = try await h.message(Self.message)
        await h.disconnect()
        await milter.peer.handlersFinished()
        #expect(milter.commands == "ODCDMDRDTLLLNDEQ")
        #expect(milter.frames("L").map(\.fields) == [["Subject", " hi"], ["From", " a@example.org"], ["X-Remove", " me"]])
        // With HDR_LEADSPC the milter's values are taken exactly.
        #expect(out.decision.edits == [.addHeader(HeaderField(name: "X-Exact", value: "no-space")), .addHeader(HeaderField(name: "X-Spaced", value: " spaced"))])
    }

    @Test func macroListsTheMilterAsksForWin() async throws {
        let milter = try FakeMilter(negotiation: Self.negotiation(macros: [(2, "{mail_addr} i"), (0, "{client_addr}")]))
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        let macros = milter.frames("D").map(\.fields)
        #expect(macros[0] == ["C{client_addr}", "192.0.2.10"])
        #expect(macros[1] == ["M{mail_addr}", "sender@example.org", "i", "TESTQ1"])
    }

    @Test func macroListsFromTheConfiguration() async throws {
        let milter = try FakeMilter()
        let stage = try Self.stage(milter.socket, ["connect_macros": .array([.string("{client_port}"), .string("unknown_macro")]), "rcpt_macros": .array([])])
        var h = StageHarness(stage: stage)
        _ = try await Self.open(&h)
        let macros = milter.frames("D").map(\.fields)
        #expect(macros.first == ["C{client_port}", "40000"])
        #expect(!macros.contains { $0.first?.hasPrefix("R") == true })
    }

    @Test func skipOnTheBodyStopsTheBodyButNotEndOfMessage() async throws {
        let milter = try FakeMilter { $0.command == "B" ? .frames([Self.frame("s")]) : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        let out = try await h.message("Subject: x\n\n" + String(repeating: "line of body\n", count: 30), chunkSize: 64)
        #expect(out.decision == StageDecision())
        #expect(milter.frames("B").count == 1)
        #expect(milter.commands.hasSuffix("NBDE"))
    }

    @Test func aSecondTransactionAbortsAnUnfinishedOne() async throws {
        let milter = try FakeMilter { $0.command == "R" ? .frames([Self.frame("r")]) : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        _ = try await h.mailFrom("again@example.org")
        #expect(milter.commands == "ODCHDMDR" + "ADM")
    }

    // MARK: A misbehaving or absent milter

    /// A session with `default_action = "quarantine"`, whose verdict names the failure: the
    /// verdicts of connect, HELO, MAIL and RCPT, and the end-of-message decision.
    static func failure(_ milter: FakeMilter) async throws -> (verdicts: [StageVerdict], eom: StageDecision) {
        var h = StageHarness(stage: try Self.stage(milter.socket, ["default_action": .string("quarantine")]))
        let verdicts = try await Self.open(&h)
        let eom = try await h.message(Self.message).decision
        return (verdicts, eom)
    }

    @Test(arguments: [
        ("an unknown reply", "H", [MilterStageTests.frame("Z")], "unexpected reply 'Z'"),
        ("a custom reply that is not one", "H", [MilterStageTests.frame("y", MilterStageTests.strings("hello"))], "malformed custom reply"),
        ("a 2xx custom reply", "H", [MilterStageTests.frame("y", MilterStageTests.strings("250 2.0.0 fine"))], "malformed custom reply"),
        ("a frame of 0 octets", "H", [[0, 0, 0, 0]], "frame of 0 octets"),
        ("a frame too large", "H", [[0x7F, 0, 0, 0, 0x63]], "frame of 2130706432 octets"),
        ("shutdown", "H", [MilterStageTests.frame("4")], "the milter shut down"),
        ("an edit outside end of message", "H", [MilterStageTests.frame("h", MilterStageTests.strings("X-A", "1"))], "unexpected reply 'h'"),
    ])
    func aMalformedReplyIsAFailureAndTheMilterIsLeftAlone(name: String, command: String, answer: [[UInt8]], reason: String) async throws {
        let milter = try FakeMilter { frame in String(frame.command) == command ? .frames(answer) : nil }
        let (verdicts, eom) = try await Self.failure(milter)
        #expect(verdicts == [.continue, .quarantine(reason: "milter milter failed: \(reason)"), .continue, .continue])
        #expect(eom == StageDecision())
        #expect(milter.commands == "ODCH")
    }

    @Test(arguments: [
        ("a malformed edit", [MilterStageTests.frame("h", MilterStageTests.strings("X-OnlyAName"))], "a malformed modification"),
        ("a bad recipient", [MilterStageTests.frame("+", MilterStageTests.strings("not an address"))], "bad recipient not an address"),
        ("a bad sender", [MilterStageTests.frame("e", MilterStageTests.strings("<a@>"))], "bad sender <a@>"),
        ("a short change", [MilterStageTests.frame("m", [0, 0, 1])], "a malformed modification"),
    ])
    func aMalformedEditIsAFailure(name: String, answer: [[UInt8]], reason: String) async throws {
        let milter = try FakeMilter { $0.command == "E" ? .frames(answer) : nil }
        let (_, eom) = try await Self.failure(milter)
        #expect(eom == StageDecision(.quarantine(reason: "milter milter failed: \(reason)")))
    }

    @Test func anEditThatWasNotNegotiatedIsAProtocolViolation() async throws {
        let milter = try FakeMilter(negotiation: Self.negotiation(actions: 0x01)) { frame in
            frame.command == "E" ? .frames([Self.frame("h", Self.strings("X-A", "1")), Self.frame("m", Milter.uint32(1) + Self.strings("Subject", "x")), Self.frame("c")]) : nil
        }
        var h = StageHarness(stage: try Self.stage(milter.socket))
        _ = try await Self.open(&h)
        #expect(try await h.message(Self.message).decision == StageDecision(Self.failed))
        await h.disconnect()
        await milter.peer.handlersFinished()
        #expect(!milter.commands.contains("Q"), "a failed milter is not spoken to again")
    }

    @Test(arguments: [
        ("version 1", MilterStageTests.negotiation(version: 1), "milter protocol version 1"),
        ("too short", [0, 0, 0, 6], "bad option negotiation reply"),
        ("an action not offered", MilterStageTests.negotiation(actions: 0x200), "the milter asked for actions or steps that were not offered"),
        ("RCPT_REJ", MilterStageTests.negotiation(flags: 0x800), "the milter asked for actions or steps that were not offered"),
    ])
    func aBadNegotiationIsAFailureAtConnect(name: String, negotiation: [UInt8], reason: String) async throws {
        let milter = try FakeMilter(negotiation: negotiation)
        let (verdicts, _) = try await Self.failure(milter)
        #expect(verdicts == [.quarantine(reason: "milter milter failed: \(reason)"), .continue, .continue, .continue])
        #expect(milter.commands == "O")
    }

    @Test func aBadNegotiationWithTheDefaultActionTempfails() async throws {
        let milter = try FakeMilter(negotiation: Self.negotiation(version: 1))
        var h = StageHarness(stage: try Self.stage(milter.socket))
        #expect(try await Self.open(&h) == [Self.failed, .continue, .continue, .continue])
    }

    @Test(arguments: [
        ("accept", StageVerdict.continue),
        ("tempfail", .tempfail(451, "4.7.1", "Service unavailable - try again later")),
        ("reject", .reject(550, "5.7.1", "Service unavailable: content filter failed")),
    ])
    func aMilterThatHangsUpMeansTheDefaultAction(action: String, expected: StageVerdict) async throws {
        let milter = try FakeMilter { $0.command == "M" ? .hangUp : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket, ["default_action": .string(action)]))
        #expect(try await Self.open(&h) == [.continue, .continue, expected, .continue])
        #expect(try await h.message(Self.message).decision == StageDecision())
    }

    @Test func aMilterThatHangsUpNamesIt() async throws {
        let milter = try FakeMilter { $0.command == "B" ? .hangUp : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket, ["default_action": .string("quarantine")]))
        _ = try await Self.open(&h)
        let out = try await h.message(Self.message)
        #expect(out.dataVerdict == .quarantine(reason: "milter milter failed: the milter closed the connection"))
    }

    @Test func aSilentMilterTimesOut() async throws {
        let milter = try FakeMilter { $0.command == "H" ? .silence : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket, ["default_action": .string("quarantine"), "command_timeout_ms": .int(150)]))
        let start = ContinuousClock.now
        let verdicts = try await Self.open(&h)
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(verdicts == [.continue, .quarantine(reason: "milter milter failed: no reply within 150 ms"), .continue, .continue])
    }

    @Test func aMilterThatIsNotListening() async throws {
        let refusing = RefusingPort()
        defer { _ = refusing.port }  // kept bound until the end
        let port = refusing.port
        var h = StageHarness(stage: try Self.stage("inet:127.0.0.1:\(port)"))
        #expect(try await Self.open(&h) == [Self.failed, .continue, .continue, .continue])
        var accepting = StageHarness(stage: try Self.stage("inet:127.0.0.1:\(port)", ["default_action": .string("accept")]))
        #expect(try await Self.open(&accepting) == [.continue, .continue, .continue, .continue])
        #expect(try await accepting.message(Self.message).decision == StageDecision())
        var quarantine = StageHarness(stage: try Self.stage("inet:127.0.0.1:\(port)", ["default_action": .string("quarantine")]))
        let first = try await quarantine.connect()
        guard case .quarantine(let reason) = first else {
            Issue.record("\(first)")
            return
        }
        #expect(reason.hasPrefix("milter milter failed: cannot connect to inet:127.0.0.1:\(port)"))
    }

    @Test func theStageNameIsInTheReasons() async throws {
        let milter = try FakeMilter { $0.command == "E" ? .frames([Self.frame("q", Self.strings("why")), Self.frame("c")]) : nil }
        var h = StageHarness(stage: try Self.stage(milter.socket, ["name": .string("clamav")]))
        _ = try await Self.open(&h)
        #expect(try await h.message(Self.message).decision.verdict == .quarantine(reason: "milter clamav: why"))
    }

    // MARK: Configuration

    @Test func socketAddresses() {
        typealias Socket = MilterConnection.Socket
        #expect(Socket("inet:127.0.0.1:8891") == .inet(host: "127.0.0.1", port: 8891))
        #expect(Socket("inet:8891@milter.example") == .inet(host: "milter.example", port: 8891))
        #expect(Socket("inet6:[::1]:8891") == .inet(host: "::1", port: 8891))
        #expect(Socket("unix:/run/opendkim.sock") == .unix(path: "/run/opendkim.sock"))
        #expect(Socket("local:/run/x.sock") == .unix(path: "/run/x.sock"))
        #expect(Socket("/run/x.sock") == .unix(path: "/run/x.sock"))
        for bad in ["tcp:127.0.0.1:8891", "inet:127.0.0.1", "inet::8891", "inet:h:0", "inet:h:70000", "unix:", "inet:[::1]8891", "127.0.0.1:8891"] {
            #expect(Socket(bad) == nil, "\(bad)")
        }
    }

    @Test(arguments: [
        ([String: ConfigValue](), "stage.socket", "missing: inet:host:port or unix:/path"),
        (["socket": .string("tcp:1.2.3.4:1")], "stage.socket", "'tcp:1.2.3.4:1' is not inet:host:port or unix:/path"),
        (["socket": .string("inet:h:1"), "protocol": .int(2)], "stage.protocol", "must be between 6 and 6"),
        (["socket": .string("inet:h:1"), "default_action": .string("discard")], "stage.default_action", #"must be one of "tempfail", "accept", "reject", "quarantine""#),
        (["socket": .string("inet:h:1"), "command_timeout_ms": .int(0)], "stage.command_timeout_ms", "must be between 1 and 3600000"),
        (["socket": .string("inet:h:1"), "mail_macros": .string("i")], "stage.mail_macros", "expected an array of strings, found string"),
    ])
    func configurationErrors(values: [String: ConfigValue], key: String, message: String) throws {
        let error = #expect(throws: ConfigError.self) { try MilterStage(config: .testing(values), environment: .testing()) }
        #expect(error?.key == key)
        #expect(error?.message == message)
    }
}
