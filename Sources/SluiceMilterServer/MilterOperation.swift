import SluiceStageAPI

/// One modification asked of the MTA at end of message, as libmilter's `smfi_*` calls make them.
/// The MTA applies them in order, each to the message as the ones before left it.
enum MilterOperation: Hashable, Sendable, CustomStringConvertible {
    /// `smfi_insheader`: before the `index`-th field (0 = on top).
    case insertHeader(index: Int, HeaderField)
    /// `smfi_addheader`: after the last field.
    case addHeader(HeaderField)
    /// `smfi_chgheader`: the `occurrence`-th (1-based) field called `field.name` gets `field`'s value.
    case changeHeader(occurrence: Int, HeaderField)
    /// `smfi_chgheader` with no value: the `occurrence`-th (1-based) field called `name` goes.
    case deleteHeader(name: String, occurrence: Int)
    /// `smfi_chgfrom`.
    case changeSender(path: String, parameters: String?)
    /// `smfi_delrcpt`, with the address exactly as `xxfi_envrcpt` was given it.
    case deleteRecipient(String)
    /// `smfi_addrcpt_par` (`smfi_addrcpt` when there are no parameters).
    case addRecipient(path: String, parameters: String?)
    /// `smfi_replacebody`, streamed from the file.
    case replaceBody(path: String)

    /// The action flag (SMFIF_*) the MTA must have granted in negotiation.
    var action: MilterActions {
        switch self {
        case .insertHeader, .addHeader: .addHeaders
        case .changeHeader, .deleteHeader: .changeHeaders
        case .changeSender: .changeSender
        case .deleteRecipient: .deleteRecipients
        case .addRecipient(_, let parameters): parameters == nil ? .addRecipients : .addRecipientsWithParameters
        case .replaceBody: .changeBody
        }
    }

    var description: String {
        switch self {
        case .insertHeader(let i, let f): "insert header \(f.name) at \(i)"
        case .addHeader(let f): "add header \(f.name)"
        case .changeHeader(let o, let f): "change header \(f.name)[\(o)]"
        case .deleteHeader(let n, let o): "delete header \(n)[\(o)]"
        case .changeSender(let p, _): "change sender \(p)"
        case .deleteRecipient(let r): "delete recipient \(r)"
        case .addRecipient(let r, _): "add recipient \(r)"
        case .replaceBody: "replace body"
        }
    }
}
