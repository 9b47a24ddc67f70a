import Foundation
import NIOSSL

/// A route's `tls` for its next hop.
public enum RelayTLSPolicy: String, Sendable, CaseIterable {
    /// Never STARTTLS.
    case none
    /// STARTTLS when offered, without certificate verification (Postfix's `may`); after a failed
    /// handshake the next hop is used in plaintext for an hour. The default.
    case opportunistic
    /// Only over STARTTLS (not verified, Postfix's `encrypt`); without it the mail waits.
    case required
    /// Only over STARTTLS, and the next hop's certificate chain must verify against the trust
    /// anchors and name the next hop (Postfix's `verify`): the host of an `smtp://`/`lmtp://`
    /// route, the MX host name from DNS for an `mx` route, or the address itself (an IP
    /// subjectAltName) for an IP-literal next hop. Anything less defers the mail (4.7.5); it
    /// never goes out in plaintext.
    case verify

    /// True for the levels under which the mail waits rather than go out in plaintext.
    var demandsTLS: Bool { self == .required || self == .verify }
}

/// A route's TLS for its next hop: `tls`, and for `verify` the trust anchors of `tls_ca_file`.
public struct RelayTLSSettings: Sendable, Hashable {
    /// `tls`.
    public var policy: RelayTLSPolicy
    /// `tls_ca_file` (only with `tls = "verify"`): the PEM bundle the next hop's chain must
    /// verify against; nil = the system trust store (NIOSSL's default trust roots).
    public var trustAnchors: RelayTrustAnchors?

    public init(policy: RelayTLSPolicy, trustAnchors: RelayTrustAnchors? = nil) {
        self.policy = policy
        self.trustAnchors = trustAnchors
    }

    public static let opportunistic = RelayTLSSettings(policy: .opportunistic)
}

/// The CA certificates of a `tls_ca_file`, read once when the config is loaded so that a
/// missing, unreadable or empty bundle is a config error rather than a deferral at delivery.
public struct RelayTrustAnchors: Sendable, Hashable {
    /// The file, as resolved (absolute).
    public let path: String
    public let certificates: [NIOSSLCertificate]

    /// Why a bundle cannot be used, in words for `sluice check-config`.
    public struct Error: Swift.Error, CustomStringConvertible {
        public var description: String
    }

    /// Reads every certificate of a PEM bundle at `path`.
    public init(path: String) throws {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw Error(description: "cannot read \(path)")
        }
        // NIOSSL says only `failedToLoadCertificate` for a file without a usable certificate.
        let certificates = (try? NIOSSLCertificate.fromPEMFile(path)) ?? []
        guard !certificates.isEmpty else {
            throw Error(description: "\(path) is not a PEM bundle of CA certificates (no valid -----BEGIN CERTIFICATE----- block)")
        }
        self.path = path
        self.certificates = certificates
    }

    public static func == (lhs: RelayTrustAnchors, rhs: RelayTrustAnchors) -> Bool { lhs.path == rhs.path }
    public func hash(into hasher: inout Hasher) { hasher.combine(path) }
}
