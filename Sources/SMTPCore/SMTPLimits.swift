/// Length limits of RFC 5321 section 4.5.3.1, applied by the grammar.
public struct SMTPLimits: Sendable, Hashable {
    /// Octets of a local part (RFC 5321 4.5.3.1.1: 64).
    public var localPart: Int = 64
    /// Octets of a domain (RFC 5321 4.5.3.1.2: 255).
    public var domain: Int = 255
    /// Octets of a path including the angle brackets (RFC 5321 4.5.3.1.3: 256).
    public var path: Int = 256

    public init() {}
}
