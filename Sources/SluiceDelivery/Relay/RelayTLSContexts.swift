import NIOSSL

/// The relay client's TLS client contexts, built once when the client starts: one without
/// certificate verification (`opportunistic`, `required`) and, for `verify`, one per distinct
/// `tls_ca_file` (or the system trust store when a route names none).
struct RelayTLSContexts: Sendable {
    private let unverified: NIOSSLContext
    /// By `tls_ca_file` path; the nil key is the system trust store.
    private let verifying: [String?: NIOSSLContext]

    init(_ settings: some Sequence<RelayTLSSettings>) throws {
        var plain = TLSConfiguration.makeClientConfiguration()
        plain.certificateVerification = .none  // opportunistic and "encrypt" levels do not verify
        plain.minimumTLSVersion = .tlsv12
        unverified = try NIOSSLContext(configuration: plain)

        var verifying: [String?: NIOSSLContext] = [:]
        for s in settings where s.policy == .verify && verifying.index(forKey: s.trustAnchors?.path) == nil {
            var tls = TLSConfiguration.makeClientConfiguration()
            // Chain and name (RFC 6125: DNS subjectAltNames, or an IP one for an address).
            tls.certificateVerification = .fullVerification
            tls.minimumTLSVersion = .tlsv12
            tls.trustRoots = s.trustAnchors.map { .certificates($0.certificates) } ?? .default
            verifying[s.trustAnchors?.path] = try NIOSSLContext(configuration: tls)
        }
        self.verifying = verifying
    }

    /// The context for a route's settings; every `verify` setting was seen at init.
    func context(for settings: RelayTLSSettings) -> NIOSSLContext {
        guard settings.policy == .verify else { return unverified }
        guard let context = verifying[settings.trustAnchors?.path] else {
            preconditionFailure("no verifying TLS context for \(settings.trustAnchors?.path ?? "the system trust store")")
        }
        return context
    }

    /// Why a handshake under `verify` failed, in words for the deferral reply; `expected` is
    /// what the certificate had to name (a host name, or "the address 192.0.2.1").
    static func reason(_ error: any Error, expected: String) -> String {
        if let extra = error as? NIOSSLExtraError,
           extra == .failedToValidateHostname || extra == .serverHostnameImpossibleToMatch {
            return "certificate name mismatch: the certificate does not name \(expected)"
        }
        let text = "\(error)"
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return "certificate verify failed: the chain does not lead to a trusted CA, or a certificate has expired or is not yet valid"
        }
        return "TLS handshake failed: \(text)"
    }
}
