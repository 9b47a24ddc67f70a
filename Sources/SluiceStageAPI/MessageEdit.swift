import SMTPCore

/// A change a stage makes to the message at end of message. Edits apply in order, and the
/// next stage sees the edited message.
public enum MessageEdit: Sendable, Hashable, CustomStringConvertible {
    /// Appends `field` at the end of the header section, exactly as given: its `value` is the
    /// text after the colon. `addHeader(name:value:)` is the usual way to write one.
    case addHeader(HeaderField)
    /// Inserts `field`, exactly as given, before position `index` (0 = first) of the header section.
    case insertHeader(index: Int, HeaderField)
    /// Replaces the value of the `occurrence`-th (1-based) field called `field.name` with
    /// `field.value` exactly; adds `field` when there is no such field.
    case changeHeader(occurrence: Int, HeaderField)
    /// Deletes the `occurrence`-th (1-based) field called `name`.
    case deleteHeader(name: String, occurrence: Int)
    case addRecipient(Mailbox, parameters: [ESMTPParameter])
    case deleteRecipient(Mailbox)
    case changeSender(ReversePath, parameters: [ESMTPParameter])
    /// Replaces the body with the contents of a file (CRLF lines, not dot-stuffed).
    /// The gateway reads it while spooling and deletes it afterwards.
    case replaceBody(path: String)

    /// Appends a header field; a space is put after the colon unless `value` starts with white space.
    public static func addHeader(name: String, value: String) -> MessageEdit {
        .addHeader(.make(name: name, value: value))
    }

    /// Inserts a header field before position `index` (0 = first); a space is put after the
    /// colon unless `value` starts with white space.
    public static func insertHeader(index: Int, name: String, value: String) -> MessageEdit {
        .insertHeader(index: index, .make(name: name, value: value))
    }

    /// Replaces the value of the `occurrence`-th (1-based) field called `name`, adding the field
    /// when there is no such one; an empty `value` deletes the field instead (milter semantics).
    /// A space is put after the colon unless `value` starts with white space.
    public static func changeHeader(name: String, occurrence: Int, value: String) -> MessageEdit {
        value.isEmpty ? .deleteHeader(name: name, occurrence: occurrence)
                      : .changeHeader(occurrence: occurrence, .make(name: name, value: value))
    }

    public var description: String {
        switch self {
        case .addHeader(let f): "add header \(f.name)"
        case .insertHeader(let i, let f): "insert header \(f.name) at \(i)"
        case .changeHeader(let o, let f): "change header \(f.name)[\(o)]"
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
