/// What a session's TLS is, once it is established (STARTTLS or implicit TLS).
public struct TLSInfo: Sendable, Hashable, Codable, CustomStringConvertible {
    /// `TLSv1.2`, `TLSv1.3`.
    public var version: String
    /// The cipher suite, in OpenSSL/IANA form (`TLS_AES_256_GCM_SHA384`).
    public var cipher: String
    /// The cipher's strength in bits (`{cipher_bits}` for milters).
    public var bits: Int

    public init(version: String, cipher: String, bits: Int) {
        self.version = version
        self.cipher = cipher
        self.bits = bits
    }

    /// `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`, as in Received.
    public var description: String { "\(version) with cipher \(cipher) (\(bits)/\(bits) bits)" }
}
