import ArgumentParser
import Foundation
import Logging
import SluiceMilterServer
import SluiceRuntime
import SluiceStageAPI

/// `sluice milter`: the configured stage chain as a milter, so that Postfix (`smtpd_milters`) or
/// Sendmail can run Sluice's stages without Sluice taking their place.
///
/// It reads the same config as `sluice run`, but only `[server] hostname`, `max_message_bytes`,
/// `relay_from` and `log_level`, `[dns]` and the `[[stage]]` tables; no `[[listener]]` is needed,
/// and any there are ignored (as are routes, `[queue]`, `[tls]` and `[auth]`).
struct Milter: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the stage chain as a milter (libmilter) for Postfix or Sendmail."
    )
    @OptionGroup var options: ConfigOption
    @Option(help: "Where to listen, as libmilter writes it: inet:PORT@HOST, inet6:PORT@HOST or unix:/path.")
    var socket = "inet:8899@127.0.0.1"
    @Option(help: "Seconds to wait on the MTA before giving up on a connection (libmilter's default: 7210).")
    var timeout: Int?
    @Option(name: .customLong("temporary-directory"), help: "Where message bodies are kept while they are checked.")
    var temporaryDirectory = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"

    func validate() throws {
        if let timeout, !(1...86_400).contains(timeout) { throw ValidationError("--timeout must be 1 to 86400 seconds") }
    }

    func run() async throws {
        let place: MilterSocket
        do { place = try MilterSocket(parsing: socket) } catch { throw Failure("--socket: \(error)") }
        let config: GatewayConfig
        do {
            config = try GatewayConfig.load(path: options.config, stagesOnly: true)
        } catch let error as ConfigError {
            throw Failure("\(error)")
        }
        config.bootstrapLogging()
        let logger = Logger(label: "sluice-milter")
        let server: MilterServer
        do {
            let chain = try StageRegistry().buildChain(config, logger: logger, resolver: try config.makeResolver())
            let settings = MilterServer.Settings(
                hostname: config.hostname, maxMessageBytes: config.maxMessageBytes, relayFrom: config.relayFrom,
                timeoutSeconds: timeout, temporaryDirectory: temporaryDirectory
            )
            server = MilterServer(chain: chain, socket: place, settings: settings, logger: logger)
        } catch let error as ConfigError {
            throw Failure("\(error)")
        }
        do {
            try await server.run()
        } catch let error as MilterServer.StartError {
            throw Failure("\(error)")
        }
    }
}
