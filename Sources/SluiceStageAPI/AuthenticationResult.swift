/// A result a stage records for the Authentication-Results header (RFC 8601), e.g. `spf=pass smtp.mailfrom=example.test`.
public struct AuthenticationResult: Sendable, Hashable, Codable {
    /// The method: `spf`, `dkim`, `dmarc`, ...
    public var method: String
    /// The result keyword: `pass`, `fail`, `none`, ...
    public var result: String
    public var reason: String?
    /// Property pairs in order, e.g. `("smtp.mailfrom", "example.test")`.
    public var properties: [Property]

    public struct Property: Sendable, Hashable, Codable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) { self.name = name; self.value = value }
    }

    public init(method: String, result: String, reason: String? = nil, properties: [Property] = []) {
        self.method = method
        self.result = result
        self.reason = reason
        self.properties = properties
    }

    /// `method=result (reason) name=value ...` as in an Authentication-Results header.
    public var resinfo: String {
        var s = "\(method)=\(result)"
        if let reason { s += " (\(reason))" }
        for p in properties { s += " \(p.name)=\(p.value)" }
        return s
    }
}

/// The results recorded for one transaction, in the order stages recorded them.
public final class ResultRecorder: Sendable {
    private let store = StageState()
    private static let key = StateKey<[AuthenticationResult]>("results")

    public init() {}

    public func record(_ result: AuthenticationResult) {
        store[Self.key] = (store[Self.key] ?? []) + [result]
    }

    public var all: [AuthenticationResult] { store[Self.key] ?? [] }
}
