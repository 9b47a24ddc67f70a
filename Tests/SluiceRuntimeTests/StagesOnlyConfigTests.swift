import Foundation
import SluiceRuntime
import SluiceStageAPI
import Testing

/// `sluice milter` reads a config with stages and no listener; `sluice run` still needs one.
@Suite("Stages-only config")
struct StagesOnlyConfigTests {
    let text = """
        [server]
        hostname = "mx.example.test"

        [dns]
        servers = ["127.0.0.1:5353"]

        [[stage]]
        use = "access"
        deny_senders = ["bad@example.test"]
        """

    @Test func loadsWithoutAListener() throws {
        let config = try GatewayConfig(file: ConfigFile(path: "/tmp/stages.conf", text: text), stagesOnly: true)
        #expect(config.listeners.isEmpty)
        #expect(config.stages.map(\.kind) == ["access"])
        #expect(config.hostname == "mx.example.test")
        #expect(config.dns.servers.count == 1)
        let chain = try StageRegistry().buildChain(config, logger: .init(label: "test"))
        #expect(chain.entries.map(\.name) == ["access"])
    }

    @Test func theGatewayStillNeedsOne() {
        #expect(throws: ConfigError.self) { try GatewayConfig(file: ConfigFile(path: "/tmp/stages.conf", text: text)) }
    }

    @Test func whatIsPresentIsStillChecked() {
        let bad = text + "\n\n[[listener]]\naddress = \"nowhere\"\n"
        #expect(throws: ConfigError.self) { try GatewayConfig(file: ConfigFile(path: "/tmp/stages.conf", text: bad), stagesOnly: true) }
    }
}
