import ArgumentParser
import Foundation
import SluiceDNS
import SluiceRuntime
import SluiceStageAPI
import SluiceStages

/// `sluice spf check`: one SPF evaluation as the `spf` stage would do it, like spfquery.
struct SPF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spf",
        abstract: "SPF tools.",
        subcommands: [Check.self]
    )

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Evaluate SPF (RFC 7208) for a client address, MAIL FROM and HELO, through the gateway's resolver."
        )
        @Option(help: "The configuration file whose [dns] and hostname are used (when --dns-server is not given).")
        var config = "pipeline.conf"
        @Option(help: "The client's IP address.") var ip: String
        @Option(help: "The MAIL FROM address; empty for the null sender (the HELO identity is checked).") var sender = ""
        @Option(help: "The HELO/EHLO name.") var helo = ""
        @Option(name: .customLong("dns-server"), help: "A DNS server to ask (address[:port]); repeatable. Overrides the config.")
        var dnsServers: [String] = []
        @Option(name: .customLong("timeout-ms"), help: "Per-query DNS timeout.") var timeoutMs: Int?
        @Option(help: "The receiving host's name (%{r}); default: the config's hostname.") var receiver: String?
        @Option(name: .customLong("default-explanation"), help: "The explanation of a fail when the domain has no exp= (macros allowed).")
        var defaultExplanation: String?
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            guard let address = IPAddress(ip) else { throw Failure("'\(ip)' is not an IP address") }
            var dns = DNSConfiguration()
            var hostname = receiver
            if dnsServers.isEmpty || hostname == nil, FileManager.default.fileExists(atPath: config) {
                let loaded: GatewayConfig
                do { loaded = try GatewayConfig.load(path: config) } catch let error as ConfigError { throw Failure("\(error)") }
                if dnsServers.isEmpty { dns = loaded.dns }
                hostname = hostname ?? loaded.hostname
            }
            if !dnsServers.isEmpty {
                dns.servers = try dnsServers.map { text in
                    guard let server = DNSConfiguration.Server(text) else { throw Failure("'\(text)' is not address[:port]") }
                    return server
                }
            }
            if let timeoutMs { dns.timeout = .milliseconds(timeoutMs) }
            let resolver: UnboundResolver
            do { resolver = try UnboundResolver(configuration: dns) } catch { throw Failure("\(error)") }
            let receiverName = hostname ?? "localhost"
            let evaluator = SPFEvaluator(
                resolver: resolver, receiver: receiverName, threads: 1,
                defaultExplanation: defaultExplanation ?? SPFEvaluator.standardExplanation
            )
            let outcome = await evaluator.check(ip: address, sender: sender, helo: helo)
            if json {
                var object: [String: Any] = [
                    "result": outcome.result.rawValue, "identity": outcome.identity.rawValue, "domain": outcome.domain,
                    "received_spf": outcome.receivedSPF(receiver: receiverName).replacingOccurrences(of: "\r\n\t", with: " "),
                    "queries": outcome.queries,
                ]
                object["explanation"] = outcome.explanation ?? NSNull()
                object["problem"] = outcome.problem ?? NSNull()
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(outcome.result.rawValue)
                print("Received-SPF: \(outcome.receivedSPF(receiver: receiverName))".replacingOccurrences(of: "\r\n", with: "\n"))
                if let e = outcome.explanation { print("explanation: \(e)") }
            }
        }
    }
}
