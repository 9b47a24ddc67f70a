import SluiceStageAPI

/// The result of an SPF check (RFC 7208 2.6).
public enum SPFResult: String, Sendable, Hashable, CaseIterable, Codable {
    case pass, fail, softfail, neutral, none, permerror, temperror
}

/// Which identity was checked (RFC 7208 2.3, 2.4).
public enum SPFIdentity: String, Sendable, Hashable, Codable {
    case mailfrom, helo
}

/// A finished SPF check: the result and what the headers and logs say about it.
public struct SPFOutcome: Sendable, Hashable {
    public var result: SPFResult
    public var identity: SPFIdentity
    /// The domain checked (the MAIL FROM domain, or the HELO name).
    public var domain: String
    /// The sender as checked: `postmaster@<helo>` for the null sender.
    public var sender: String
    public var clientIP: IPAddress
    public var helo: String
    /// For `fail`: the explanation (the domain's `exp=` text, or the default).
    public var explanation: String?
    /// Why an error result happened (a syntax error, a limit, a DNS failure).
    public var problem: String?
    /// DNS queries the check made.
    public var queries: Int

    public init(result: SPFResult, identity: SPFIdentity, domain: String, sender: String, clientIP: IPAddress,
                helo: String, explanation: String? = nil, problem: String? = nil, queries: Int = 0) {
        self.result = result
        self.identity = identity
        self.domain = domain
        self.sender = sender
        self.clientIP = clientIP
        self.helo = helo
        self.explanation = explanation
        self.problem = problem
        self.queries = queries
    }

    /// The comment of Received-SPF and the reason of SMTP replies (RFC 7208 9.1).
    public func comment(receiver: String) -> String {
        let who = identity == .mailfrom ? "domain of \(sender)" : "domain of \(helo)"
        let text: String
        switch result {
        case .pass: text = "\(who) designates \(clientIP) as permitted sender"
        case .fail: text = "\(who) does not designate \(clientIP) as permitted sender"
        case .softfail: text = "\(who) does not designate \(clientIP) as permitted sender (softfail)"
        case .neutral: text = "\(clientIP) is neither permitted nor denied by \(who)"
        case .none: text = "\(who) does not publish SPF"
        case .permerror: text = "permanent error checking \(who)" + (problem.map { ": \($0)" } ?? "")
        case .temperror: text = "temporary error checking \(who)" + (problem.map { ": \($0)" } ?? "")
        }
        return "\(receiver): \(text)"
    }

    /// The Received-SPF field value (RFC 7208 9.1), folded for a header.
    public func receivedSPF(receiver: String) -> String {
        var pairs = ["client-ip=\(clientIP)"]
        pairs.append("envelope-from=\(Self.quoted(sender))")
        if !helo.isEmpty { pairs.append("helo=\(Self.quoted(helo))") }
        pairs.append("receiver=\(receiver)")
        pairs.append("identity=\(identity.rawValue)")
        if let problem, result == .permerror || result == .temperror { pairs.append("problem=\(Self.quoted(problem))") }
        return "\(result.rawValue) (\(Self.commentSafe(comment(receiver: receiver))))\r\n\t" + pairs.joined(separator: ";\r\n\t")
    }

    /// The resinfo for Authentication-Results (RFC 8601 2.7.2).
    public var authenticationResult: AuthenticationResult {
        let property = identity == .mailfrom
            ? AuthenticationResult.Property("smtp.mailfrom", sender)
            : AuthenticationResult.Property("smtp.helo", helo)
        return AuthenticationResult(method: "spf", result: result.rawValue, properties: [property])
    }

    /// A dot-atom stays bare; anything else is a quoted-string.
    static func quoted(_ s: String) -> String {
        let atext = s.unicodeScalars.allSatisfy { c in
            c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || "!#$%&'*+-/=?^_`{|}~.@".unicodeScalars.contains(c))
        }
        if atext && !s.isEmpty && !s.hasPrefix(".") { return s }
        let escaped = s.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F }
            .map { $0 == "\"" || $0 == "\\" ? "\\\($0)" : String($0) }.joined()
        return "\"\(escaped)\""
    }

    /// Parentheses and control characters cannot appear inside a header comment as they are.
    static func commentSafe(_ s: String) -> String {
        String(s.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F }.map { $0 == "(" ? "[" : $0 == ")" ? "]" : Character($0) })
    }
}
