import ArgumentParser
import Crypto
import Foundation
import SwiftASN1
import _CryptoExtras

/// `sluice dkim keygen`: a DKIM key pair for `dkim-sign`, and the DNS record to publish.
struct DKIM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dkim",
        abstract: "DKIM tools.",
        subcommands: [Keygen.self]
    )

    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a DKIM private key and print the TXT record to publish at SELECTOR._domainkey.DOMAIN."
        )
        @Option(help: "The signing domain (d=).") var domain: String
        @Option(help: "The selector (s=).") var selector: String
        @Option(help: "rsa (default) or ed25519 (RFC 8463).") var algorithm = "rsa"
        @Option(help: "RSA key size: 1024 to 4096 (default 2048).") var bits = 2048
        @Option(help: "Where to write the private key (PEM, mode 0600); default keys/DOMAIN.SELECTOR.pem.") var out: String?
        @Flag(help: "Replace an existing key file.") var force = false

        func run() throws {
            guard !domain.isEmpty, !selector.isEmpty,
                  (domain + selector).allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" }) else {
                throw Failure("--domain and --selector must be DNS names")
            }
            let path = out ?? "keys/\(domain).\(selector).pem"
            let fm = FileManager.default
            if fm.fileExists(atPath: path) && !force { throw Failure("\(path) exists (use --force to replace it)") }
            let pem: String
            let record: String
            let stageAlgorithm: String
            switch algorithm {
            case "rsa":
                guard [1024, 2048, 3072, 4096].contains(bits) else { throw Failure("--bits must be 1024, 2048, 3072 or 4096") }
                let key = try _RSA.Signing.PrivateKey(unsafeKeySize: _RSA.Signing.KeySize(bitCount: bits))
                pem = key.pemRepresentation
                // p= is the base64 SubjectPublicKeyInfo (RFC 6376 3.6.1).
                record = "v=DKIM1; k=rsa; p=\(key.publicKey.derRepresentation.base64EncodedString())"
                stageAlgorithm = "rsa-sha256"
            case "ed25519":
                let key = Curve25519.Signing.PrivateKey()
                // PKCS#8 for Ed25519 (RFC 8410): the 32-octet seed in a fixed wrapper.
                let prefix: [UInt8] = [0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]
                pem = PEMDocument(type: "PRIVATE KEY", derBytes: prefix + Array(key.rawRepresentation)).pemString
                // p= is the raw 32-octet public key (RFC 8463 4.2).
                record = "v=DKIM1; k=ed25519; p=\(key.publicKey.rawRepresentation.base64EncodedString())"
                stageAlgorithm = "ed25519-sha256"
            default:
                throw Failure("--algorithm must be rsa or ed25519")
            }
            let dir = (path as NSString).deletingLastPathComponent
            if !dir.isEmpty { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            guard fm.createFile(atPath: path, contents: Data((pem + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
                throw Failure("cannot write \(path)")
            }
            try fm.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
            print("wrote \(path)")
            print("publish this TXT record:")
            print("\(selector)._domainkey.\(domain). IN TXT \(Self.quotedStrings(record))")
            print("""
            and use the key:
            [[stage.keys]]
            domain = "\(domain)"
            selector = "\(selector)"
            key = "\(path)"
            algorithm = "\(stageAlgorithm)"
            """)
        }

        /// A TXT value as character-strings of at most 255 octets (RFC 1035 3.3.14).
        static func quotedStrings(_ text: String) -> String {
            var parts: [String] = []
            var rest = Substring(text)
            while !rest.isEmpty {
                parts.append("\"\(rest.prefix(250))\"")
                rest = rest.dropFirst(250)
            }
            return parts.count == 1 ? parts[0] : "( " + parts.joined(separator: " ") + " )"
        }
    }
}
