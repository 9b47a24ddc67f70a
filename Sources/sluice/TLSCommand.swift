import ArgumentParser
import Crypto
import Foundation
import SwiftASN1
import X509
import _CryptoExtras

/// `sluice tls self-signed`: a development certificate for `[tls]`.
struct TLS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tls",
        abstract: "TLS tools.",
        subcommands: [SelfSigned.self]
    )

    struct SelfSigned: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "self-signed",
            abstract: "Write a self-signed certificate and its key (for development and tests; use a real certificate on port 25)."
        )
        @Option(help: "The host name the certificate is for (subject CN and DNS name).") var hostname: String
        @Option(help: "Where to write the certificate (PEM).") var certificate = "etc/tls/cert.pem"
        @Option(help: "Where to write the private key (PEM, mode 0600).") var key = "etc/tls/key.pem"
        @Option(help: "Key algorithm: ecdsa (P-256) or rsa (2048 bits).") var algorithm = "ecdsa"
        @Option(help: "Days the certificate is valid.") var days = 365
        @Flag(help: "Replace existing files.") var force = false

        func run() throws {
            guard days > 0 && days <= 3650 else { throw Failure("--days must be 1 to 3650") }
            guard !hostname.isEmpty, hostname.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }) else {
                throw Failure("'\(hostname)' is not a host name")
            }
            let fm = FileManager.default
            if !force {
                for path in [certificate, key] where fm.fileExists(atPath: path) {
                    throw Failure("\(path) exists (use --force to replace it)")
                }
            }
            let privateKey: Certificate.PrivateKey
            let keyPEM: String
            let signature: Certificate.SignatureAlgorithm
            switch algorithm {
            case "ecdsa":
                let k = P256.Signing.PrivateKey()
                privateKey = Certificate.PrivateKey(k)
                keyPEM = k.pemRepresentation
                signature = .ecdsaWithSHA256
            case "rsa":
                let k = try _RSA.Signing.PrivateKey(keySize: .bits2048)
                privateKey = Certificate.PrivateKey(k)
                keyPEM = k.pemRepresentation
                signature = .sha256WithRSAEncryption
            default:
                throw Failure("--algorithm must be ecdsa or rsa")
            }
            let name = try DistinguishedName { CommonName(hostname) }
            let now = Date()
            let cert = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: privateKey.publicKey,
                notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
                issuer: name, subject: name, signatureAlgorithm: signature,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true, keyEncipherment: algorithm == "rsa"))
                    try ExtendedKeyUsage([.serverAuth])
                    SubjectAlternativeNames([.dnsName(hostname)])
                },
                issuerPrivateKey: privateKey
            )
            var serializer = DER.Serializer()
            try serializer.serialize(cert)
            let certPEM = PEMDocument(type: "CERTIFICATE", derBytes: serializer.serializedBytes).pemString
            for path in [certificate, key] {
                let dir = (path as NSString).deletingLastPathComponent
                if !dir.isEmpty { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            }
            guard fm.createFile(atPath: key, contents: Data((keyPEM + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
                throw Failure("cannot write \(key)")
            }
            try fm.setAttributes([.posixPermissions: 0o600], ofItemAtPath: key)
            guard fm.createFile(atPath: certificate, contents: Data((certPEM + "\n").utf8), attributes: [.posixPermissions: 0o644]) else {
                throw Failure("cannot write \(certificate)")
            }
            print("wrote \(certificate) and \(key) for \(hostname), valid \(days) days")
            print("""
            [tls]
            certificate = "\(certificate)"
            key = "\(key)"
            """)
        }
    }
}
