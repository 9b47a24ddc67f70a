import SMTPCore

/// `[auth] sender_login`: which authenticated users may use which MAIL FROM addresses, like
/// Postfix's `smtpd_sender_login_maps` with `reject_sender_login_mismatch`. Lines are
/// `address user[,user...]` or `@domain user[,user...]`; `#` starts a comment. An
/// authenticated client may use only addresses that list its user; the null sender is allowed.
public struct SenderLoginMap: Sendable {
    private var owners: [String: Set<String>] = [:]

    public init(text: String) {
        for raw in text.split(separator: "\n") {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2 else { continue }
            let users = fields.dropFirst().joined(separator: ",").split(separator: ",").map { String($0) }.filter { !$0.isEmpty }
            owners[Self.key(String(fields[0])), default: []].formUnion(users)
        }
    }

    /// Local part as written, domain lowercased; `@domain` entries lowercased.
    static func key(_ address: String) -> String {
        guard let at = address.lastIndex(of: "@") else { return address.lowercased() }
        return String(address[..<at]) + "@" + address[address.index(after: at)...].lowercased()
    }

    /// Whether `user` may send as `sender`.
    public func allows(user: String, sender: ReversePath) -> Bool {
        guard let mailbox = sender.mailbox else { return true }
        let full = "\(mailbox.localPart)@\(mailbox.normalizedDomain)"
        if let users = owners[full] { return users.contains(user) }
        if let users = owners["@" + mailbox.normalizedDomain] { return users.contains(user) }
        return false
    }
}
