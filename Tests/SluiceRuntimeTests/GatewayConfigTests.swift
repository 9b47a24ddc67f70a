import Foundation
import Logging
import SluicePipeline
import SluiceRuntime
import SluiceServer
import SluiceStageAPI
import Testing

let configPath = "/etc/sluice/pipeline.conf"

func load(_ text: String) throws -> GatewayConfig {
    try GatewayConfig(file: ConfigFile(path: configPath, text: text))
}

/// The 1-based line of the `occurrence`-th line of `text` containing `needle`.
func line(of needle: String, in text: String, occurrence: Int = 1) -> Int {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    let matches = lines.indices.filter { lines[$0].contains(needle) }
    guard matches.count >= occurrence else { fatalError("'\(needle)' is not in the config \(occurrence) times") }
    return matches[occurrence - 1] + 1
}

let quiet = Logger(label: "sluice-tests") { _ in SwiftLogNoOpLogHandler() }

/// A complete, valid configuration; tests change one thing in it.
let validConfig = """
    # Sluice test configuration
    [server]
    hostname = "mx.example.test"
    relay_from = ["127.0.0.0/8", "::1/128"]
    max_errors = 5

    [[listener]]
    address = "127.0.0.1:2525"

    [[listener]]
    address = "[::1]:2525"

    [[route]]
    domains = ["example.test", "Example.ORG"]
    to = "maildir:var/mail"

    [[route]]
    domains = ["*"]
    to = "maildir:/srv/relay"

    [[stage]]
    use = "access"
    deny_clients = ["192.0.2.0/24"]
    timeout_ms = 500
    on_error = "accept"

    [[stage]]
    use = "size-limit"
    name = "limit"
    max_bytes = 1048576
    """

/// `validConfig` with one line replaced (`old` must be a whole line of it).
func replacing(_ old: String, with new: String) -> String {
    let lines = validConfig.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    precondition(lines.contains(old), "'\(old)' is not a line of validConfig")
    return lines.map { $0 == old ? new : $0 }.joined(separator: "\n")
}

/// What a configuration error must say: `file:line: key: message`.
struct ConfigErrorRow: Sendable, CustomTestStringConvertible {
    var name: String
    var text: String
    var key: String
    /// The line the error must name; nil when there is none to name.
    var line: Int?
    var message: String
    var testDescription: String { name }

    /// `lineOf`: a piece of the line the error must point at (its `occurrence`-th appearance).
    init(_ name: String, _ text: String, key: String, lineOf: String?, occurrence: Int = 1, message: String) {
        self.name = name
        self.text = text
        self.key = key
        self.line = lineOf.map { SluiceRuntimeTests.line(of: $0, in: text, occurrence: occurrence) }
        self.message = message
    }

    func check(_ error: ConfigError?, sourceLocation: SourceLocation = #_sourceLocation) {
        guard let error else {
            Issue.record("no ConfigError", sourceLocation: sourceLocation)
            return
        }
        let location = line.map { "\(configPath):\($0)" } ?? configPath
        let prefix = "\(location): \(key): "
        #expect(error.description.hasPrefix(prefix), "expected \"\(prefix)…\", got \"\(error.description)\"", sourceLocation: sourceLocation)
        #expect(error.file == configPath, sourceLocation: sourceLocation)
        #expect(error.key == key, sourceLocation: sourceLocation)
        #expect(error.line == line, sourceLocation: sourceLocation)
        #expect(error.message.contains(message), "message: \(error.message)", sourceLocation: sourceLocation)
    }
}

func configError(_ body: () throws -> Void) -> ConfigError? {
    do {
        try body()
        return nil
    } catch let error as ConfigError {
        return error
    } catch {
        Issue.record("expected a ConfigError, got \(type(of: error)): \(error)")
        return nil
    }
}

@Suite("GatewayConfig")
struct GatewayConfigTests {
    @Test func validConfiguration() throws {
        let config = try load(validConfig)
        #expect(config.file == configPath)
        #expect(config.directory == "/etc/sluice")
        #expect(config.hostname == "mx.example.test")
        #expect(config.spool == "/etc/sluice/var/spool")
        #expect(config.relayFrom.map(\.description) == ["127.0.0.0/8", "::1/128"])
        #expect(config.maxErrors == 5)
        #expect(config.listenerTexts == ["127.0.0.1:2525", "[::1]:2525"])
        #expect(config.routes.map(\.domains) == [["example.test", "example.org"], ["*"]])
        #expect(config.routes.map(\.destination.description) == ["maildir:/etc/sluice/var/mail", "maildir:/srv/relay"])
        #expect(config.stages.map(\.kind) == ["access", "size-limit"])
        #expect(config.stages.map(\.name) == ["access", "limit"])
        #expect(config.stages.map(\.timeout) == [.milliseconds(500), .milliseconds(30_000)])
        #expect(config.stages.map(\.onError) == [.accept, .tempfail])
    }

    @Test func proxyTimeout() throws {
        #expect(try load(validConfig).listeners.map(\.proxyTimeout) == [.seconds(10), .seconds(10)])
        let set = try load(validConfig.replacingOccurrences(
            of: "address = \"127.0.0.1:2525\"", with: "address = \"127.0.0.1:2525\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\nproxy_timeout_s = 3"))
        #expect(set.listeners.first?.proxyTimeout == .seconds(3))
        #expect(set.listeners.first?.proxyProtocol == true)
    }

    @Test func defaults() throws {
        let config = try load(validConfig)
        #expect(config.maxRecipients == 100)
        #expect(config.maxConnections == 1000)
        #expect(config.maxConnectionsPerIP == 50)
        #expect(config.commandTimeoutSeconds == 300)
        #expect(config.dataTimeoutSeconds == 180)
        #expect(config.maxMessageBytes == 52_428_800)
        #expect(config.commandLineLimit == 512)
        #expect(config.textLineLimit == 1000)
        #expect(config.greetPauseMilliseconds == 0)
        #expect(config.disconnectOnPipeliningViolation)
        #expect(config.minFreeBytes == 104_857_600)
        #expect(config.shutdownGraceSeconds == 30)
        #expect(config.deliveryConcurrency == 32)
        #expect(config.logLevel == "info")
    }

    @Test func settings() throws {
        let config = try load(replacing("max_errors = 5", with: """
            max_errors = 5
            spool = "/var/spool/sluice"
            pipelining_violation = "allow"
            max_message_bytes = 2048
            log_level = "debug"
            """))
        #expect(config.spool == "/var/spool/sluice")
        #expect(!config.disconnectOnPipeliningViolation)
        #expect(config.maxMessageBytes == 2048)
        #expect(config.logLevel == "debug")
    }

    @Test func buildsTheChain() throws {
        let config = try load(validConfig)
        let chain = try StageRegistry().buildChain(config, logger: quiet)
        #expect(chain.entries.map(\.name) == ["access", "limit"])
        #expect(chain.entries.map(\.kind) == ["access", "size-limit"])
        #expect(chain.entries[0].onError == .accept)
        #expect(chain.entries[0].timeout == .milliseconds(500))
        #expect(chain.messageSizeLimit == 1_048_576)
        #expect(chain.hooks(.connect))
        #expect(!chain.hooks(.helo))
    }

    @Test func loadReadsAFile() throws {
        let dir = NSTemporaryDirectory() + "sluice-config-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try validConfig.write(toFile: dir + "/pipeline.conf", atomically: true, encoding: .utf8)
        let config = try GatewayConfig.load(path: dir + "/pipeline.conf")
        #expect(config.spool == dir + "/var/spool")

        let error = configError { _ = try GatewayConfig.load(path: dir + "/missing.conf") }
        #expect(error?.file == dir + "/missing.conf")
        #expect(error?.message.contains("cannot read the file") == true)
    }

    // MARK: Errors name the file, the line and the key

    static let topLevelRows: [ConfigErrorRow] = [
        ConfigErrorRow("unknown top-level key", "typo = 1\n" + validConfig, key: "typo", lineOf: "typo", message: "unknown key"),
        ConfigErrorRow("unknown top-level table", validConfig + "\n[servers]\nx = 1\n", key: "servers", lineOf: "[servers]", message: "unknown key"),
        ConfigErrorRow("server is not a table", "server = 5\n", key: "server", lineOf: "server = 5", message: "expected a [server] table"),
        ConfigErrorRow("listener is not a table array", "listener = \"127.0.0.1:25\"\n", key: "listener", lineOf: "listener =", message: "expected [[listener]] tables"),
    ]

    @Test(arguments: topLevelRows) func topLevelErrors(_ row: ConfigErrorRow) {
        row.check(configError { _ = try load(row.text) })
    }

    static let serverRows: [ConfigErrorRow] = [
        ConfigErrorRow(
            "unknown [server] key", replacing("max_errors = 5", with: "max_errors = 5\nmax_recipents = 5"),
            key: "server.max_recipents", lineOf: "max_recipents", message: "unknown key"
        ),
        ConfigErrorRow(
            "wrong type", replacing("max_errors = 5", with: "max_errors = \"five\""),
            key: "server.max_errors", lineOf: "max_errors", message: "expected an integer, found string"
        ),
        ConfigErrorRow(
            "out of range", replacing("max_errors = 5", with: "max_errors = 0"),
            key: "server.max_errors", lineOf: "max_errors", message: "must be between 1 and 10000"
        ),
        ConfigErrorRow(
            "command line limit below RFC 5321", replacing("max_errors = 5", with: "command_line_limit = 100"),
            key: "server.command_line_limit", lineOf: "command_line_limit", message: "must be between 512 and"
        ),
        ConfigErrorRow(
            "bad relay_from", replacing("relay_from = [\"127.0.0.0/8\", \"::1/128\"]", with: "relay_from = [\"300.0.0.0/8\"]"),
            key: "server.relay_from", lineOf: "relay_from", message: "'300.0.0.0/8' is not an address or CIDR"
        ),
        ConfigErrorRow(
            "relay_from not an array", replacing("relay_from = [\"127.0.0.0/8\", \"::1/128\"]", with: "relay_from = \"127.0.0.1\""),
            key: "server.relay_from", lineOf: "relay_from", message: "expected an array of strings, found string"
        ),
        ConfigErrorRow(
            "bad hostname", replacing("hostname = \"mx.example.test\"", with: "hostname = \"bad host\""),
            key: "server.hostname", lineOf: "hostname", message: "is not a host name"
        ),
        ConfigErrorRow(
            "bad choice", replacing("max_errors = 5", with: "pipelining_violation = \"maybe\""),
            key: "server.pipelining_violation", lineOf: "pipelining_violation", message: "must be one of \"disconnect\", \"allow\""
        ),
        ConfigErrorRow(
            "bad log level", replacing("max_errors = 5", with: "log_level = \"loud\""),
            key: "server.log_level", lineOf: "log_level", message: "must be one of"
        ),
    ]

    @Test(arguments: serverRows) func serverErrors(_ row: ConfigErrorRow) {
        row.check(configError { _ = try load(row.text) })
    }

    static let badListenerAddresses: [String] = [
        "localhost:2525", "127.0.0.1", "127.0.0.1:70000", "127.0.0.1:port", "[::1]2525", "[::1:2525", ":2525", "example.test:25",
    ]

    static let listenerRows: [ConfigErrorRow] = badListenerAddresses
        .map { address in
            ConfigErrorRow(
                "listener address \(address)", replacing("address = \"127.0.0.1:2525\"", with: "address = \"\(address)\""),
                key: "listener[1].address", lineOf: address, message: "is not host:port with an IP address"
            )
        } + [
            ConfigErrorRow(
                "second listener", replacing("address = \"[::1]:2525\"", with: "address = \"::1\""),
                key: "listener[2].address", lineOf: "\"::1\"", message: "is not host:port"
            ),
            ConfigErrorRow(
                "listener without address", replacing("address = \"127.0.0.1:2525\"", with: "port = 2525"),
                key: "listener[1].address", lineOf: "[[listener]]", message: "missing"
            ),
            ConfigErrorRow(
                "unknown listener key", replacing("address = \"127.0.0.1:2525\"", with: "address = \"127.0.0.1:2525\"\ntls = true"),
                key: "listener[1].tls", lineOf: "tls = true", message: "unknown key"
            ),
            ConfigErrorRow(
                "no listener", "[server]\nhostname = \"mx.example.test\"\n", key: "listener", lineOf: nil,
                message: "at least one [[listener]]"
            ),
            ConfigErrorRow(
                "PROXY header timeout out of range",
                replacing("address = \"127.0.0.1:2525\"", with: "address = \"127.0.0.1:2525\"\nproxy_timeout_s = 0"),
                key: "listener[1].proxy_timeout_s", lineOf: "proxy_timeout_s = 0", message: "must be between 1 and 300"
            ),
        ]

    @Test(arguments: listenerRows) func listenerErrors(_ row: ConfigErrorRow) {
        row.check(configError { _ = try load(row.text) })
    }

    static let routeRows: [ConfigErrorRow] = [
        ConfigErrorRow(
            "route to an unsupported destination", replacing("to = \"maildir:var/mail\"", with: "to = \"smtp:relay.example.test\""),
            key: "route[1].to", lineOf: "smtp:relay", message: "is not a destination"
        ),
        ConfigErrorRow(
            "route to an empty maildir", replacing("to = \"maildir:/srv/relay\"", with: "to = \"maildir:\""),
            key: "route[2].to", lineOf: "\"maildir:\"", message: "is not a destination"
        ),
        ConfigErrorRow(
            "route without to", replacing("to = \"maildir:var/mail\"", with: ""),
            key: "route[1].to", lineOf: "[[route]]", message: "missing"
        ),
        ConfigErrorRow(
            "route without domains", replacing("domains = [\"*\"]", with: ""),
            key: "route[2].domains", lineOf: "[[route]]", occurrence: 2, message: "missing or empty"
        ),
        ConfigErrorRow(
            "route with an address as a domain", replacing("domains = [\"*\"]", with: "domains = [\"user@example.test\"]"),
            key: "route[2].domains", lineOf: "user@example.test", message: "is not a domain name"
        ),
        ConfigErrorRow(
            "route with a wildcard domain", replacing("domains = [\"*\"]", with: "domains = [\"*.example.test\"]"),
            key: "route[2].domains", lineOf: "*.example.test", message: "is not a domain name"
        ),
        ConfigErrorRow(
            "unknown route key", replacing("to = \"maildir:/srv/relay\"", with: "to = \"maildir:/srv/relay\"\npriority = 1"),
            key: "route[2].priority", lineOf: "priority", message: "unknown key"
        ),
    ]

    @Test(arguments: routeRows) func routeErrors(_ row: ConfigErrorRow) {
        row.check(configError { _ = try load(row.text) })
    }

    static let stageRows: [ConfigErrorRow] = [
        ConfigErrorRow(
            "stage without use", replacing("use = \"size-limit\"", with: ""),
            key: "stage[2].use", lineOf: "[[stage]]", occurrence: 2, message: "missing"
        ),
        ConfigErrorRow(
            "bad on_error", replacing("on_error = \"accept\"", with: "on_error = \"explode\""),
            key: "stage[1].on_error", lineOf: "explode", message: "must be one of \"tempfail\", \"accept\", \"reject\""
        ),
        ConfigErrorRow(
            "zero timeout", replacing("timeout_ms = 500", with: "timeout_ms = 0"),
            key: "stage[1].timeout_ms", lineOf: "timeout_ms", message: "must be between 1 and"
        ),
    ]

    @Test(arguments: stageRows) func stageErrors(_ row: ConfigErrorRow) {
        row.check(configError { _ = try load(row.text) })
    }

    /// Errors found while the stages are made (after the file itself was read).
    static let chainRows: [ConfigErrorRow] = [
        ConfigErrorRow(
            "unknown stage name", replacing("use = \"access\"", with: "use = \"acess\""),
            key: "stage[1].use", lineOf: "acess", message: "unknown stage 'acess' (known: \(StageRegistry().names.joined(separator: ", ")))"
        ),
        ConfigErrorRow(
            "unknown stage key", replacing("deny_clients = [\"192.0.2.0/24\"]", with: "deny_client = [\"192.0.2.0/24\"]"),
            key: "stage[1].deny_client", lineOf: "deny_client", message: "unknown key"
        ),
        ConfigErrorRow(
            "bad stage value", replacing("deny_clients = [\"192.0.2.0/24\"]", with: "deny_clients = [\"bogus\"]"),
            key: "stage[1].deny_clients", lineOf: "bogus", message: "'bogus' is not an address or CIDR"
        ),
        ConfigErrorRow(
            "bad value in the second stage", replacing("max_bytes = 1048576", with: "max_bytes = \"1M\""),
            key: "stage[2].max_bytes", lineOf: "max_bytes", message: "expected an integer, found string"
        ),
        ConfigErrorRow(
            "two stages with one name", replacing("name = \"limit\"", with: "name = \"access\""),
            key: "stage", lineOf: nil, message: "two stages are named 'access'"
        ),
    ]

    @Test(arguments: chainRows) func chainErrors(_ row: ConfigErrorRow) throws {
        let config = try load(row.text)
        row.check(configError { _ = try StageRegistry().buildChain(config, logger: quiet) })
    }

    @Test func tomlSyntaxError() {
        let text = "[server]\nhostname = \"mx.example.test\"\nmax_errors = = 5\n"
        let error = configError { _ = try load(text) }
        #expect(error?.file == configPath)
        #expect(error?.line == 3)
        #expect(error?.message.contains("TOML syntax error") == true)
        #expect(error?.description.hasPrefix("\(configPath):3: ") == true, "\(String(describing: error))")
    }

    // MARK: The registry

    struct Sealer: Stage {
        var phases: Set<StagePhase> { [.endOfMessage] }
        var capabilities: StageCapabilities { [.sealsMessage, .addsHeaders] }
    }

    struct Footer: Stage {
        var phases: Set<StagePhase> { [.endOfMessage] }
        var capabilities: StageCapabilities { [.replacesBody] }
    }

    func registry() -> StageRegistry {
        var r = StageRegistry()
        r.register(StageFactory(name: "sign", summary: "seals") { _, _ in Sealer() })
        r.register(StageFactory(name: "footer", summary: "adds a footer") { _, _ in Footer() })
        return r
    }

    @Test func registryNames() {
        let r = registry()
        #expect(r.names == StageRegistry().names + ["sign", "footer"], "registered after the built-ins, in order")
        // Built-in stages first (the generated registry, by type name), then local ones.
        #expect(StageRegistry().names.starts(with: ["access", "dkim-sign", "dkim-verify", "dmarc", "header-checks", "milter", "spf", "size-limit", "spam"]))
        #expect(StageRegistry().names.suffix(3) == ["dnsbl", "greylist", "rate-limit"])
        #expect(r.factory("sign")?.summary == "seals")
        #expect(r.factory("nope") == nil)
    }

    @Test func unsafeStageOrderIsAConfigError() throws {
        let text = validConfig + "\n\n[[stage]]\nuse = \"sign\"\n\n[[stage]]\nuse = \"footer\"\n"
        let config = try load(text)
        let error = configError { _ = try registry().buildChain(config, logger: quiet) }
        #expect(error?.key == "stage")
        #expect(error?.file == configPath)
        #expect(error?.message.contains("'footer'") == true, "\(String(describing: error))")
        #expect(error?.message.contains("'sign'") == true, "\(String(describing: error))")

        let reversed = try load(validConfig + "\n\n[[stage]]\nuse = \"footer\"\n\n[[stage]]\nuse = \"sign\"\n")
        #expect(try registry().buildChain(reversed, logger: quiet).entries.map(\.name) == ["access", "limit", "footer", "sign"])
    }

    @Test func configFileLines() throws {
        let file = try ConfigFile(path: configPath, text: validConfig)
        #expect(file.line(table: "server", key: "hostname") == line(of: "hostname", in: validConfig))
        #expect(file.line(table: "server", key: nil) == line(of: "[server]", in: validConfig))
        #expect(file.line(table: "stage[2]", key: "max_bytes") == line(of: "max_bytes", in: validConfig))
        #expect(file.line(table: "listener[2]", key: "address") == line(of: "[::1]:2525", in: validConfig))
        #expect(file.line(table: "route[1]", key: "unknown") == line(of: "[[route]]", in: validConfig))
    }
}
