import Foundation
import SluiceRuntime
import SluiceDelivery
import SluiceSpool
import Testing

/// A CA certificate made for these tests (`openssl req -x509`, EC P-256, valid until 2126); only
/// its loading is tested here: verification against a next hop is in the integration tests.
let testCAPEM = """
    -----BEGIN CERTIFICATE-----
    MIIBkzCCATmgAwIBAgIUc53ZxfExyf5YSX3P5q0e10GHjJUwCgYIKoZIzj0EAwIw
    HjEcMBoGA1UEAwwTU2x1aWNlIHVuaXQtdGVzdCBDQTAgFw0yNjExMjkxNzU4MTRa
    GA8yMTI2MTEwNTE3NTgxNFowHjEcMBoGA1UEAwwTU2x1aWNlIHVuaXQtdGVzdCBD
    QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABCu0PyYkrpIH7iT0oBBvwlWksJ5v
    ucvAu8sL8m0Rz/QYVgaqV5P9Esk2ZynziPyWhO7LCNCYG2TWZQEm4vj8Yd6jUzBR
    MB0GA1UdDgQWBBRQ3BcgHpOpwY6TDB3DSaVvN2lXsTAfBgNVHSMEGDAWgBRQ3Bcg
    HpOpwY6TDB3DSaVvN2lXsTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
    MEUCIQDpWvIXmhCgI5WZo6QGm9c0SUAisEmih0EfSLPvKdGNaAIgG8TYV0baNjcN
    2IlOiIwGAwUOYaKATQqzYkSetwVCOYQ=
    -----END CERTIFICATE-----

    """

/// `validConfig` with its first route sent to `to`, plus `extra` route lines.
func relayRoute(_ to: String, _ extra: String) -> String {
    replacing("to = \"maildir:var/mail\"", with: "to = \"\(to)\"\n" + extra)
}

/// A directory with `pipeline.conf` (the given text) and the named files; removed by the caller.
func configDirectory(_ text: String, files: [String: String]) throws -> String {
    let dir = NSTemporaryDirectory() + "sluice-relay-tls-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try text.write(toFile: dir + "/pipeline.conf", atomically: true, encoding: .utf8)
    for (name, content) in files { try content.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8) }
    return dir
}

@Suite("Relay route TLS (tls, tls_ca_file)")
struct RelayTLSConfigTests {
    @Test func levelsWithoutACAFile() throws {
        for level in ["none", "opportunistic", "required", "verify"] {
            let config = try load(relayRoute("smtp://relay.example:2525", "tls = \"\(level)\""))
            let settings = config.relayTLS[.smtp(host: "relay.example", port: 2525)]
            #expect(settings?.policy.rawValue == level)
            #expect(settings?.trustAnchors == nil)
        }
        let config = try load(relayRoute("mx", "tls = \"verify\""))
        #expect(config.mxTLS == RelayTLSSettings(policy: .verify))
        // An IP literal is matched by an IP subjectAltName: accepted.
        _ = try load(relayRoute("smtp://192.0.2.1:25", "tls = \"verify\""))
        // The default is unchanged.
        #expect(try load(validConfig).mxTLS == .opportunistic)
    }

    @Test func caFileIsReadRelativeToTheConfig() throws {
        let text = relayRoute("lmtp://relay.example:24", "tls = \"verify\"\ntls_ca_file = \"certs/ca.pem\"")
        let dir = try configDirectory(text, files: [:])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/certs", withIntermediateDirectories: true)
        try testCAPEM.write(toFile: dir + "/certs/ca.pem", atomically: true, encoding: .utf8)
        let config = try GatewayConfig.load(path: dir + "/pipeline.conf")
        let settings = try #require(config.relayTLS[.lmtp(host: "relay.example", port: 24)])
        #expect(settings.policy == .verify)
        #expect(settings.trustAnchors?.path == dir + "/certs/ca.pem")
        #expect(settings.trustAnchors?.certificates.count == 1)
    }

    @Test func mxRouteTakesACAFile() throws {
        let dir = try configDirectory("", files: ["ca.pem": testCAPEM])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = try load(relayRoute("mx", "tls = \"verify\"\ntls_ca_file = \"\(dir)/ca.pem\""))
        #expect(config.mxTLS.policy == .verify)
        #expect(config.mxTLS.trustAnchors?.path == dir + "/ca.pem")
    }

    @Test func aFileWithoutCertificatesIsAnError() throws {
        for junk in ["", "not a certificate\n", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
            let text = relayRoute("smtp://relay.example:25", "tls = \"verify\"\ntls_ca_file = \"junk.pem\"")
            let dir = try configDirectory(text, files: ["junk.pem": junk])
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let error = configError { _ = try GatewayConfig.load(path: dir + "/pipeline.conf") }
            #expect(error?.key == "route[1].tls_ca_file")
            #expect(error?.message.contains("\(dir)/junk.pem is not a PEM bundle of CA certificates") == true, "\(String(describing: error))")
        }
    }

    static let rows: [ConfigErrorRow] = [
        ConfigErrorRow(
            "tls_ca_file with tls = required",
            relayRoute("smtp://relay.example:25", "tls = \"required\"\ntls_ca_file = \"/etc/ssl/ca.pem\""),
            key: "route[1].tls_ca_file", lineOf: "tls_ca_file", message: "is only used with tls = \"verify\" (this route has tls = \"required\")"
        ),
        ConfigErrorRow(
            "tls_ca_file with the default tls", relayRoute("mx", "tls_ca_file = \"/etc/ssl/ca.pem\""),
            key: "route[1].tls_ca_file", lineOf: "tls_ca_file", message: "(this route has tls = \"opportunistic\")"
        ),
        ConfigErrorRow(
            "missing tls_ca_file (relative to the config)",
            relayRoute("smtp://relay.example:25", "tls = \"verify\"\ntls_ca_file = \"no/such/ca.pem\""),
            key: "route[1].tls_ca_file", lineOf: "tls_ca_file", message: "cannot read /etc/sluice/no/such/ca.pem"
        ),
        ConfigErrorRow(
            "empty tls_ca_file", relayRoute("smtp://relay.example:25", "tls = \"verify\"\ntls_ca_file = \"\""),
            key: "route[1].tls_ca_file", lineOf: "tls_ca_file", message: "is empty"
        ),
        ConfigErrorRow(
            "tls_ca_file on a maildir route", relayRoute("maildir:var/mail", "tls_ca_file = \"/etc/ssl/ca.pem\""),
            key: "route[1].tls_ca_file", lineOf: "tls_ca_file", message: "only SMTP and LMTP routes use TLS"
        ),
        ConfigErrorRow(
            "verify on a unix socket", relayRoute("lmtp:unix:/run/lmtp.sock", "tls = \"verify\""),
            key: "route[1].tls", lineOf: "tls = \"verify\"", message: "not a unix socket"
        ),
        ConfigErrorRow(
            "unknown tls level", relayRoute("smtp://relay.example:25", "tls = \"dane\""),
            key: "route[1].tls", lineOf: "tls = \"dane\"", message: "\"verify\""
        ),
    ]

    @Test(arguments: rows) func errors(_ row: ConfigErrorRow) {
        row.check(configError { _ = try load(row.text) })
    }
}
