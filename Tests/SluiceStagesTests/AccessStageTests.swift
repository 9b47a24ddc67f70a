import Logging
import SMTPCore
import SluiceStageAPI
@testable import SluiceStages
import Testing

func table(_ values: [String: ConfigValue], lines: [String: Int] = [:]) -> ConfigTable {
    ConfigTable(path: "stage[1]", file: "/etc/sluice/pipeline.conf", values: values) { lines[$0] }
}

func strings(_ items: String...) -> ConfigValue { .array(items.map { .string($0) }) }

func session(client: String = "198.51.100.7", helo: String? = "client.test", state: StageState = StageState()) -> SessionInfo {
    SessionInfo(
        id: "S1", clientAddress: client, clientPort: 40000, serverAddress: "192.0.2.1", serverPort: 25,
        serverHostname: "mx.example.test", heloName: helo, esmtp: true, state: state
    )
}

func transaction(_ sender: ReversePath) -> TransactionInfo { TransactionInfo(queueID: "Q", sender: sender) }

func mb(_ address: String) -> Mailbox {
    let at = address.lastIndex(of: "@")!
    return Mailbox(localPart: String(address[..<at]), domain: String(address[address.index(after: at)...]))
}

let denied: StageVerdict = .reject(554, "5.7.1", "Access denied")

@Suite("AccessStage")
struct AccessStageTests {
    // MARK: Clients (CIDR)

    @Test(arguments: [
        ("192.0.2.7", denied),
        ("192.0.2.255", denied),
        ("192.0.3.1", StageVerdict.continue),
        ("::ffff:192.0.2.7", denied),
        ("2001:db8::5", denied),
        ("2001:db8:ffff::1", denied),
        ("2001:db9::1", .continue),
        ("10.1.2.3", denied),
        ("10.1.2.4", .continue),
        ("not an address", .continue),
    ])
    func denyClients(_ client: String, _ expected: StageVerdict) async throws {
        let stage = try AccessStage(config: table(["deny_clients": strings("192.0.2.0/24", "2001:db8::/32", "10.1.2.3")]))
        #expect(stage.phases == [.connect])
        #expect(try await stage.connect(session: session(client: client)) == expected)
    }

    @Test func allowedClientSkipsEveryOtherCheckForTheSession() async throws {
        let stage = try AccessStage(config: table([
            "allow_clients": strings("192.0.2.7"),
            "deny_clients": strings("192.0.2.0/24"),
            "deny_helo": strings("*"),
            "deny_senders": strings("@client.test"),
            "deny_recipients": strings("example.test"),
        ]))
        #expect(stage.phases == [.connect, .helo, .mailFrom, .rcptTo])
        let s = session(client: "192.0.2.7")
        #expect(try await stage.connect(session: s) == .accept)
        #expect(try await stage.helo(session: s) == .accept)
        #expect(try await stage.mailFrom(session: s, transaction: transaction(.mailbox(mb("a@client.test")))) == .accept)
        #expect(try await stage.rcptTo(Recipient(mb("u@example.test")), session: s, transaction: transaction(.null)) == .accept)

        let other = session(client: "192.0.2.8")
        #expect(try await stage.connect(session: other) == denied)
        #expect(try await stage.helo(session: other) == denied)
    }

    @Test func allowedIPv4MatchesAMappedClient() async throws {
        let stage = try AccessStage(config: table(["allow_clients": strings("192.0.2.0/24"), "deny_clients": strings("0.0.0.0/0", "::/0")]))
        #expect(try await stage.connect(session: session(client: "::ffff:192.0.2.9")) == .accept)
        #expect(try await stage.connect(session: session(client: "::ffff:198.51.100.1")) == denied)
        #expect(try await stage.connect(session: session(client: "2001:db8::1")) == denied)
    }

    // MARK: HELO names

    @Test(arguments: [
        ("mx.bad.test", denied),
        ("MX.BAD.TEST", denied),
        ("bad.test", StageVerdict.continue),
        ("localhost", denied),
        ("host", denied),
        ("hast", denied),
        ("hoost", .continue),
        ("good.bad.test", .accept),
        ("client.test", .continue),
        ("", .continue),
    ])
    func heloPatterns(_ helo: String, _ expected: StageVerdict) async throws {
        let stage = try AccessStage(config: table([
            "deny_helo": strings("*.bad.test", "localhost", "h?st"),
            "allow_helo": strings("good.bad.test"),
        ]))
        #expect(stage.phases == [.helo])
        #expect(try await stage.helo(session: session(helo: helo)) == expected)
    }

    @Test(arguments: [
        ("*", "anything", true), ("*", "", true), ("a*b", "ab", true), ("a*b", "axxb", true), ("a*b", "axxbc", false),
        ("*.test", "x.test", true), ("*.test", "test", false), ("?", "", false), ("??", "ab", true), ("a*b*c", "abbbc", true),
        ("a*b*c", "acb", false), ("exact", "EXACT", true), ("exact", "exactly", false),
    ])
    func glob(_ pattern: String, _ text: String, _ matches: Bool) {
        #expect(GlobPattern(pattern).matches(text) == matches)
    }

    // MARK: Senders and recipients

    @Test(arguments: [
        (ReversePath.null, denied),
        (.mailbox(mb("spam@bad.test")), denied),
        (.mailbox(mb("SPAM@Bad.Test")), denied),
        (.mailbox(mb("ham@bad.test")), .continue),
        (.mailbox(mb("anyone@evil.test")), denied),
        (.mailbox(mb("anyone@sub.evil.test")), .continue),
        (.mailbox(mb("x@a.junk.test")), denied),
        (.mailbox(mb("x@junk.test")), .continue),
        (.mailbox(mb("abuse@anywhere.test")), denied),
        (.mailbox(mb("someone@plain.test")), denied),
        (.mailbox(mb("friend@evil.test")), .accept),
    ])
    func senderPatterns(_ sender: ReversePath, _ expected: StageVerdict) async throws {
        let stage = try AccessStage(config: table([
            "deny_senders": strings("<>", "spam@bad.test", "@evil.test", "*.junk.test", "abuse@", "plain.test"),
            "allow_senders": strings("friend@evil.test"),
        ]))
        #expect(stage.phases == [.mailFrom])
        #expect(try await stage.mailFrom(session: session(), transaction: transaction(sender)) == expected)
    }

    @Test func recipientPatterns() async throws {
        let stage = try AccessStage(config: table([
            "deny_recipients": strings("@example.test"),
            "allow_recipients": strings("postmaster@"),
            "reply": .string("550 5.1.1 Recipient refused"),
        ]))
        #expect(stage.phases == [.rcptTo])
        let tx = transaction(.mailbox(mb("s@client.test")))
        #expect(try await stage.rcptTo(Recipient(mb("user@example.test")), session: session(), transaction: tx) == .reject(550, "5.1.1", "Recipient refused"))
        #expect(try await stage.rcptTo(Recipient(mb("postmaster@example.test")), session: session(), transaction: tx) == .accept)
        #expect(try await stage.rcptTo(Recipient(mb("user@other.test")), session: session(), transaction: tx) == .continue)
    }

    @Test(arguments: ["user@example.test", "@example.test", "example.test", "*.example.test", "user@", "<>", "a@b@example.test"])
    func validAddressPatterns(_ text: String) {
        #expect(AddressPattern(text) != nil)
    }

    @Test(arguments: ["", "@", "*.", "*.a@b", "@a@b", "@user@"])
    func invalidAddressPatterns(_ text: String) {
        #expect(AddressPattern(text) == nil)
    }

    // MARK: The reply

    @Test func tempfailReply() async throws {
        let stage = try AccessStage(config: table(["deny_clients": strings("192.0.2.0/24"), "reply": .string("451 4.7.1 Try again later")]))
        #expect(try await stage.connect(session: session(client: "192.0.2.1")) == .tempfail(451, "4.7.1", "Try again later"))
    }

    @Test func replyWithoutEnhancedCode() async throws {
        let stage = try AccessStage(config: table(["deny_clients": strings("192.0.2.0/24"), "reply": .string("550 Go away")]))
        #expect(try await stage.connect(session: session(client: "192.0.2.1")) == .reject(SMTPReply(550, nil, "Go away")))
    }

    @Test func noKeysHooksNothing() throws {
        #expect(try AccessStage(config: table([:])).phases.isEmpty)
    }

    // MARK: Bad configuration

    @Test(arguments: [
        ("deny_clients", strings("not-an-ip"), "not an address or CIDR"),
        ("allow_clients", strings("192.0.2.0/33"), "not an address or CIDR"),
        ("deny_clients", strings("192.0.2.0/"), "not an address or CIDR"),
        ("deny_clients", strings("2001:db8::/129"), "not an address or CIDR"),
        ("deny_clients", .string("192.0.2.1"), "expected an array of strings, found string"),
        ("deny_clients", .array([.int(1)]), "expected an array of strings"),
        ("deny_senders", strings("@"), "not an address pattern"),
        ("allow_recipients", strings(""), "not an address pattern"),
        ("deny_helo", .int(3), "expected an array of strings, found integer"),
        ("reply", .string("250 Ok"), "is not a 4xx/5xx reply"),
        ("reply", .string("Access denied"), "is not a 4xx/5xx reply"),
        ("reply", .string("554 4.7.1 mismatched classes"), "is not a 4xx/5xx reply"),
        ("reply", .int(554), "expected a string, found integer"),
    ])
    func badValues(_ key: String, _ value: ConfigValue, _ message: String) {
        let error = #expect(throws: ConfigError.self) {
            _ = try AccessStage(config: table([key: value], lines: [key: 12]))
        }
        #expect(error?.key == "stage[1].\(key)")
        #expect(error?.line == 12)
        #expect(error?.description.hasPrefix("/etc/sluice/pipeline.conf:12: stage[1].\(key): ") == true, "\(String(describing: error))")
        #expect(error?.message.contains(message) == true, "\(String(describing: error))")
    }
}

@Suite("SizeLimitStage")
struct SizeLimitStageTests {
    @Test func defaults() throws {
        let stage = try SizeLimitStage(config: table([:]))
        #expect(stage.maxBytes == 10_485_760)
        #expect(stage.messageSizeLimit == 10_485_760)
        #expect(stage.phases.isEmpty)
    }

    @Test func configured() throws {
        let stage = try SizeLimitStage(config: table(["max_bytes": .int(1000)]))
        #expect(stage.messageSizeLimit == 1000)
    }

    @Test(arguments: [
        (ConfigValue.int(0), "must be between 1 and"),
        (.int(-5), "must be between 1 and"),
        (.int(Int(Int32.max) + 1), "must be between 1 and"),
        (.string("10MB"), "expected an integer, found string"),
        (.double(1.5), "expected an integer, found float"),
    ])
    func badMaxBytes(_ value: ConfigValue, _ message: String) {
        let error = #expect(throws: ConfigError.self) { _ = try SizeLimitStage(config: table(["max_bytes": value])) }
        #expect(error?.key == "stage[1].max_bytes")
        #expect(error?.message.contains(message) == true, "\(String(describing: error))")
    }

    @Test func builtinFactories() throws {
        let names = BuiltinStages.all.map(\.name)
        #expect(Set(names) == ["access", "size-limit", "header-checks", "spf", "dkim-verify", "dkim-sign", "dmarc", "spam", "milter"])
        #expect(Set(names).count == names.count, "built-in stage names are unique")
        let env = StageEnvironment(hostname: "mx.example.test", configDirectory: "/etc/sluice", logger: .init(label: "t"))
        let stage = try SizeLimitStage.factory.makeStage(config: table(["max_bytes": .int(5)]), environment: env)
        #expect(stage.messageSizeLimit == 5)
        #expect(env.resolvePath("x/y") == "/etc/sluice/x/y")
        #expect(env.resolvePath("/abs") == "/abs")
    }
}
