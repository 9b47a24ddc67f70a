import CMilter
import Foundation
import SluiceStageAPI

/// One libmilter connection context (`SMFICTX *`), valid only inside a callback. The calls that
/// take C strings are made here, so no pointer outlives the call that needed it.
struct LibmilterContext {
    let pointer: OpaquePointer

    /// The value of a macro the MTA sent (`j`, `{daemon_addr}`, `i`, ...), nil when it sent none.
    func symbol(_ name: String) -> String? {
        withCString(name) { n in smfi_getsymval(pointer, n) }.flatMap { String(validatingCString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The per-connection object (`smfi_setpriv`/`smfi_getpriv`).
    var privateData: UnsafeMutableRawPointer? {
        get { smfi_getpriv(pointer) }
        nonmutating set { _ = smfi_setpriv(pointer, newValue) }
    }

    /// Asks for a list of macros at one protocol step (`SMFIM_CONNECT`, ...), during negotiation.
    func requestMacros(_ macros: [String], at step: Int32) {
        _ = withCString(macros.joined(separator: " ")) { smfi_setsymlist(pointer, step, $0) }
    }

    /// The reply the MTA gives its client with the next SMFIS_REJECT or SMFIS_TEMPFAIL.
    @discardableResult
    func setReply(_ reply: SMTPReply) -> Bool {
        // libmilter reads its text as a format: a lone % would lose the text.
        let lines = reply.lines.map { $0.replacingOccurrences(of: "%", with: "%%") }
        let code = String(reply.code)
        let enhanced = reply.enhancedCode?.description
        if lines.count == 1 {
            return withCString(code) { c in
                withOptionalCString(enhanced) { e in withCString(lines[0]) { t in smfi_setreply(pointer, c, e, t) } }
            } == MI_SUCCESS
        }
        // smfi_setmlreply takes at most 32 lines.
        var kept = Array(lines.prefix(32))
        if lines.count > 32 { kept[31] = lines[31...].joined(separator: " ") }
        let copies = kept.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        var table = [UnsafePointer<CChar>?](repeating: nil, count: 32)
        for (i, p) in copies.enumerated() { table[i] = UnsafePointer(p) }
        return code.withCString { c in
            withOptionalConstCString(enhanced) { e in
                table.withUnsafeBufferPointer { sluice_smfi_setmlreply(pointer, c, e, $0.baseAddress) }
            }
        } == MI_SUCCESS
    }

    func quarantine(_ reason: String) -> Bool {
        withCString(reason.isEmpty ? "quarantined" : reason) { smfi_quarantine(pointer, $0) } == MI_SUCCESS
    }

    /// Carries out one end-of-message modification.
    /// - Parameters:
    ///   - leadingSpace: SMFIP_HDR_LEADSPC was negotiated (values carry their own leading space).
    ///   - granted: the actions the MTA allowed; a recipient's parameters are dropped when only
    ///     plain `smfi_addrcpt` is allowed.
    func perform(_ operation: MilterOperation, leadingSpace: Bool, granted: MilterActions) throws(MilterEditError) {
        let rc: Int32
        switch operation {
        case .insertHeader(let index, let field):
            rc = withCString(field.name) { n in
                withCString(MilterHeaderText.value(of: field, leadingSpace: leadingSpace)) { v in smfi_insheader(pointer, Int32(index), n, v) }
            }
        case .addHeader(let field):
            rc = withCString(field.name) { n in
                withCString(MilterHeaderText.value(of: field, leadingSpace: leadingSpace)) { v in smfi_addheader(pointer, n, v) }
            }
        case .changeHeader(let occurrence, let field):
            rc = withCString(field.name) { n in
                withCString(MilterHeaderText.value(of: field, leadingSpace: leadingSpace)) { v in smfi_chgheader(pointer, n, Int32(occurrence), v) }
            }
        case .deleteHeader(let name, let occurrence):
            rc = withCString(name) { n in smfi_chgheader(pointer, n, Int32(occurrence), nil) }
        case .changeSender(let path, let parameters):
            rc = withCString(path) { p in withOptionalCString(parameters) { a in smfi_chgfrom(pointer, p, a) } }
        case .deleteRecipient(let argument):
            rc = withCString(argument) { smfi_delrcpt(pointer, $0) }
        case .addRecipient(let path, let parameters):
            if let parameters, granted.contains(.addRecipientsWithParameters) {
                rc = withCString(path) { p in withCString(parameters) { a in smfi_addrcpt_par(pointer, p, a) } }
            } else {
                rc = withCString(path) { smfi_addrcpt(pointer, $0) }
            }
        case .replaceBody(let path):
            try replaceBody(from: path)
            return
        }
        guard rc == MI_SUCCESS else { throw MilterEditError(operation: operation.description, why: "the MTA refused it") }
    }

    /// `smfi_replacebody` in chunks read from `path`, so the body is never in memory whole.
    private func replaceBody(from path: String) throws(MilterEditError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MilterEditError(operation: "replace body", why: "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var sent = false
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw MilterEditError(operation: "replace body", why: "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            // An empty replacement is still a replacement: one empty chunk.
            if n == 0 && sent { return }
            let rc = buffer.withUnsafeMutableBufferPointer { smfi_replacebody(pointer, $0.baseAddress, Int32(n)) }
            guard rc == MI_SUCCESS else { throw MilterEditError(operation: "replace body", why: "the MTA refused it") }
            sent = true
            if n == 0 { return }
        }
    }
}

/// A modification the MTA would not take (not negotiated, or the connection failed).
struct MilterEditError: Error, CustomStringConvertible {
    var operation: String
    var why: String
    var description: String { "\(operation): \(why)" }
}

/// libmilter's API takes `char *` even where it only reads; each copy lives for the call.
private func withCString<R>(_ text: String, _ body: (UnsafeMutablePointer<CChar>) -> R) -> R {
    var bytes = Array(text.utf8CString)
    return bytes.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
}

private func withOptionalCString<R>(_ text: String?, _ body: (UnsafeMutablePointer<CChar>?) -> R) -> R {
    guard let text else { return body(nil) }
    return withCString(text) { body($0) }
}

private func withOptionalConstCString<R>(_ text: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let text else { return body(nil) }
    return text.withCString { body($0) }
}
