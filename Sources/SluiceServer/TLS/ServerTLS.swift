import NIOCore
import NIOSSL
import Synchronization

/// The server side's TLS (`[tls]`): the certificate and key, loaded at startup and again on
/// SIGHUP. Sessions take the context current when they start TLS; a reload never touches
/// sessions already running.
///
/// ```toml
/// [tls]
/// certificate = "etc/tls/cert.pem"   # PEM chain, leaf first
/// key = "etc/tls/key.pem"            # PEM private key
/// min_version = "1.2"                # "1.2" or "1.3"
/// ```
public final class ServerTLS: Sendable {
    public struct Settings: Sendable, Hashable {
        public var certificatePath: String
        public var keyPath: String
        public var minimumVersion: TLSVersion

        public init(certificatePath: String, keyPath: String, minimumVersion: TLSVersion = .tlsv12) {
            self.certificatePath = certificatePath
            self.keyPath = keyPath
            self.minimumVersion = minimumVersion
        }
    }

    /// The certificate or key could not be used.
    public struct LoadError: Error, CustomStringConvertible {
        public var description: String
    }

    public let settings: Settings
    private let current: Mutex<NIOSSLContext>

    /// Loads the certificate and key.
    /// - Throws: `LoadError` naming the file and what is wrong with it.
    public init(settings: Settings) throws {
        self.settings = settings
        current = Mutex(try Self.makeContext(settings))
    }

    /// The context for a session starting TLS now.
    public var context: NIOSSLContext { current.withLock { $0 } }

    /// Reads the files again; on failure the old certificate stays in use.
    public func reload() throws {
        let fresh = try Self.makeContext(settings)
        current.withLock { $0 = fresh }
    }

    static func makeContext(_ settings: Settings) throws -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(settings.certificatePath)
        } catch {
            throw LoadError(description: "cannot read the certificate \(settings.certificatePath): \(error)")
        }
        guard !chain.isEmpty else { throw LoadError(description: "no certificate in \(settings.certificatePath)") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: settings.keyPath, format: .pem)
        } catch {
            throw LoadError(description: "cannot read the private key \(settings.keyPath): \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = settings.minimumVersion
        // Clients are not asked for certificates (MTA-to-MTA TLS is opportunistic).
        configuration.certificateVerification = .none
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw LoadError(description: "the certificate \(settings.certificatePath) and key \(settings.keyPath) do not make a TLS context: \(error)")
        }
    }
}
