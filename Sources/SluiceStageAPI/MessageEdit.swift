import SMTPCore

/// A change a stage makes to the message at end of message. Edits apply in order, and the
/// next stage sees the edited message.
public enum MessageEdit: Sendable, Hashable, CustomStringConvertible {
    /// Appends a header field at the end of the header section.
    case addHeader(name: String, value: String)
    /// Inserts a header field before position `index` (0 = first) of the header section.
    case insertHeader(index: Int, name: String, value: String)
    /// Replaces the value of the `occurrence`-th (1-based) field called `name`; adds it when there is no such field.
    case changeHeader(name: String, occurrence: Int, value: String)
    /// Deletes the `occurrence`-th (1-based) field called `name`.
    case deleteHeader(name: String, occurrence: Int)
    case addRecipient(Mailbox, parameters: [ESMTPParameter])
    case deleteRecipient(Mailbox)
    case changeSender(ReversePath, parameters: [ESMTPParameter])
    /// Replaces the body with the contents of a file (CRLF lines, not dot-stuffed).
    /// The gateway reads it while spooling and deletes it afterwards.
    case replaceBody(path: String)

    public var description: String {
        switch self {
        case .addHeader(let n, _): "add header \(n)"
        case .insertHeader(let i, let n, _): "insert header \(n) at \(i)"
        case .changeHeader(let n, let o, _): "change header \(n)[\(o)]"
        case .deleteHeader(let n, let o): "delete header \(n)[\(o)]"
        case .addRecipient(let m, _): "add recipient <\(m)>"
        case .deleteRecipient(let m): "delete recipient <\(m)>"
        case .changeSender(let p, _): "change sender \(p)"
        case .replaceBody: "replace body"
        }
    }

    /// The capability a stage must declare to make this edit.
    public var requiredCapability: StageCapabilities {
        switch self {
        case .addHeader, .insertHeader: .addsHeaders
        case .changeHeader, .deleteHeader: .changesHeaders
        case .addRecipient, .deleteRecipient, .changeSender: .changesEnvelope
        case .replaceBody: .replacesBody
        }
    }
}
