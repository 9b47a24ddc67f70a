import SMTPCore
import SluiceStageAPI
#if canImport(Glibc)
import Glibc
#endif

/// One SMTP session's conversation with one milter (milter8.c is the reference for the MTA
/// side): negotiation, macros before each event, replies mapped onto verdicts, and the
/// end-of-message actions mapped onto edits.
///
/// `@unchecked Sendable`: the chain calls a stage's phases one after another for a session,
/// never concurrently, so the mutable state here is only touched by one task at a time.
final class MilterSession: @unchecked Sendable {
    private let stage: MilterStage
    private var connection: MilterConnection?
    /// The milter failed: it is left alone for the rest of the session.
    var dead = false
    /// A transaction has started (MAIL) and not ended (end of message).
    var inTransaction = false
    /// The milter said SKIP to a body chunk.
    var skipBody = false
    /// The milter accepted: nothing more is sent for the session or the transaction.
    private var acceptedSession = false
    private var acceptedTransaction = false
    private(set) var protocolFlags: Milter.ProtocolFlags = []
    private var actions: Milter.Actions = []
    private var macroLists: [Milter.MacroStage: [String]]

    init(stage: MilterStage) {
        self.stage = stage
        macroLists = stage.macros
    }

    func close() {
        connection?.close()
        connection = nil
    }

    /// Connects and negotiates (SMFIC_OPTNEG): version 6, every action, every protocol step.
    func open() async throws {
        let c = try await MilterConnection.open(stage.socket, timeout: stage.connectTimeout)
        connection = c
        let offer = Milter.uint32(Milter.version) + Milter.uint32(Milter.Actions.all.rawValue)
            + Milter.uint32(Milter.ProtocolFlags.offered.rawValue)
        try await c.send(Milter.frame(Milter.Command.optionNegotiation.rawValue, offer))
        let (command, data) = try await c.read(timeout: stage.commandTimeout)
        guard command == Milter.Reply.optionNegotiation.rawValue, data.count >= 12,
              let version = Milter.readUInt32(data[0..<4]), let a = Milter.readUInt32(data[4..<8]), let p = Milter.readUInt32(data[8..<12])
        else { throw MilterConnection.Failure(description: "bad option negotiation reply") }
        guard version >= 2 && version <= 6 else { throw MilterConnection.Failure(description: "milter protocol version \(version)") }
        actions = Milter.Actions(rawValue: a)
        protocolFlags = Milter.ProtocolFlags(rawValue: p)
        guard Milter.Actions.all.isSuperset(of: actions), Milter.ProtocolFlags.offered.isSuperset(of: protocolFlags) else {
            throw MilterConnection.Failure(description: "the milter asked for actions or steps that were not offered")
        }
        // Optional macro lists: (uint32 stage, "name name ...\0") pairs.
        var rest = data[12...]
        while rest.count >= 5, let id = Milter.readUInt32(rest.prefix(4)) {
            rest = rest.dropFirst(4)
            guard let nul = rest.firstIndex(of: 0) else { break }
            let names = String(decoding: rest[..<nul], as: UTF8.self).split(separator: " ").map(String.init)
            if let s = Milter.MacroStage(rawValue: id) { macroLists[s] = names }
            rest = rest[rest.index(after: nul)...]
        }
    }

    /// The skip and no-reply flags of an event.
    private func flags(_ command: Milter.Command) -> (skip: Milter.ProtocolFlags, noReply: Milter.ProtocolFlags) {
        switch command {
        case .connect: (.noConnect, .noReplyConnect)
        case .helo: (.noHelo, .noReplyHelo)
        case .mail: (.noMail, .noReplyMail)
        case .rcpt: (.noRcpt, .noReplyRcpt)
        case .data: (.noData, .noReplyData)
        case .header: (.noHeaders, .noReplyHeader)
        case .endOfHeaders: (.noEOH, .noReplyEOH)
        case .body: (.noBody, .noReplyBody)
        case .unknown: (.noUnknown, .noReplyUnknown)
        default: ([], [])
        }
    }

    /// Macros (SMFIC_MACRO) for a stage, then its event; the reply as a verdict.
    func event(_ macroStage: Milter.MacroStage, data: [UInt8], macros values: [String: String]) async throws -> StageVerdict {
        let command = macroStage.command
        if macroStage == .mail {
            acceptedTransaction = false
            skipBody = false
        }
        guard !acceptedSession, !acceptedTransaction else { return .continue }
        if protocolFlags.contains(flags(command).skip) { return .continue }
        try await sendMacros(macroStage, values)
        return try await send(command, data: data, noReply: flags(command).noReply, skipped: flags(command).skip)
    }

    private func sendMacros(_ macroStage: Milter.MacroStage, _ values: [String: String]) async throws {
        let names = macroLists[macroStage] ?? []
        var pairs: [String] = []
        for name in names {
            let key = name.hasPrefix("{") || name.count == 1 ? name : "{\(name)}"
            if let v = values[key] ?? values[name] { pairs += [key, v] }
        }
        guard !pairs.isEmpty, let c = connection else { return }
        try await c.send(Milter.frame(Milter.Command.macro.rawValue, [macroStage.command.rawValue] + Milter.cStrings(pairs)))
    }

    /// Sends one command; reads the reply unless the milter said it sends none.
    func send(_ command: Milter.Command, data: [UInt8], noReply: Milter.ProtocolFlags, skipped: Milter.ProtocolFlags) async throws -> StageVerdict {
        guard !acceptedSession, !acceptedTransaction else { return .continue }
        if protocolFlags.contains(skipped) { return .continue }
        guard let c = connection else { throw MilterConnection.Failure(description: "not connected") }
        try await c.send(Milter.frame(command.rawValue, data))
        if protocolFlags.contains(noReply) { return .continue }
        let timeout = command == .body ? stage.contentTimeout : stage.commandTimeout
        while true {
            let (reply, payload) = try await c.read(timeout: timeout)
            switch Milter.Reply(rawValue: reply) {
            case .progress:
                continue
            case .skip where command == .body:
                skipBody = true
                return .continue
            case .accept:
                if command == .connect || command == .helo { acceptedSession = true } else { acceptedTransaction = true }
                return .continue
            case .discard:
                // libmilter answers nothing more for a discarded transaction (or session).
                if command == .connect || command == .helo { acceptedSession = true } else { acceptedTransaction = true }
                return .discard
            default:
                return try verdict(reply, payload)
            }
        }
    }

    /// Sends a command that has no reply (QUIT, ABORT).
    func sendOnly(_ command: Milter.Command) async throws {
        try await connection?.send(Milter.frame(command.rawValue))
    }

    /// RSET or a refused transaction: the milter hears ABORT before the next MAIL.
    func abortIfInTransaction() async throws {
        if inTransaction { try await sendOnly(.abort) }
        inTransaction = false
    }

    /// A final reply as a verdict.
    private func verdict(_ reply: UInt8, _ payload: [UInt8]) throws -> StageVerdict {
        switch Milter.Reply(rawValue: reply) {
        case .continue: return .continue
        case .reject: return .reject(550, "5.7.1", "Command rejected")
        case .tempfail: return .tempfail(451, "4.7.1", "Service unavailable - try again later")
        case .discard: return .discard
        case .quarantine: return .quarantine(reason: Milter.fields(payload[...]).first ?? "milter")
        case .replyCode:
            guard let reply = Self.customReply(payload) else { throw MilterConnection.Failure(description: "malformed custom reply") }
            return reply.code >= 500 ? .reject(reply) : .tempfail(reply)
        case .shutdown, .connectionFailure:
            throw MilterConnection.Failure(description: "the milter shut down")
        default:
            throw MilterConnection.Failure(description: "unexpected reply '\(Unicode.Scalar(reply))'")
        }
    }

    /// SMFIR_REPLYCODE: "550 5.7.1 text", possibly multi-line ("550-5.7.1 a\r\n550 5.7.1 b").
    static func customReply(_ payload: [UInt8]) -> SMTPReply? {
        let text = Milter.fields(payload[...]).first ?? ""
        let lines = text.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        guard let first = lines.first, first.count >= 3, let code = Int(first.prefix(3)), (400...599).contains(code) else { return nil }
        var enhanced: EnhancedStatusCode?
        var out: [String] = []
        for line in lines {
            guard line.hasPrefix(String(code)) else { return nil }
            var rest = Substring(line.dropFirst(4))
            if let e = EnhancedStatusCode(rest.prefix { $0 != " " }), String(e.statusClass) == String(code / 100) {
                enhanced = e
                rest = rest.drop { $0 != " " }.dropFirst()
            }
            out.append(String(rest))
        }
        return SMTPReply(code, enhanced, out.isEmpty ? [""] : out)
    }

    /// End of message: macros, SMFIC_BODYEOB, then modifications until the final reply.
    func endOfMessage(macros values: [String: String], headers: [HeaderField]) async throws -> StageDecision {
        defer { acceptedTransaction = false; skipBody = false }
        guard !acceptedSession, !acceptedTransaction else { return StageDecision() }
        guard let c = connection else { throw MilterConnection.Failure(description: "not connected") }
        try await sendMacros(.endOfMessage, values)
        try await c.send(Milter.frame(Milter.Command.endOfBody.rawValue))
        var edits: [MessageEdit] = []
        var quarantine: String?
        var body: BodyFile?
        defer { body?.discard() }
        while true {
            let (reply, payload) = try await c.read(timeout: stage.contentTimeout)
            let fields = Milter.fields(payload[...])
            switch Milter.Reply(rawValue: reply) {
            case .progress:
                continue
            case .addHeader:
                try require(.addHeaders, fields.count >= 2)
                edits.append(.addHeader(field(fields[0], fields[1])))
            case .insertHeader:
                try require(.addHeaders, payload.count > 4)
                let index = Int(Milter.readUInt32(payload[0..<4]) ?? 0)
                let f = Milter.fields(payload[4...])
                try require(.addHeaders, f.count >= 2)
                edits.append(.insertHeader(index: index, field(f[0], f[1])))
            case .changeHeader:
                try require(.changeHeaders, payload.count > 4)
                let index = Int(Milter.readUInt32(payload[0..<4]) ?? 0)
                let f = Milter.fields(payload[4...])
                try require(.changeHeaders, f.count >= 1)
                let v = f.count > 1 ? f[1] : ""
                edits.append(v.isEmpty ? .deleteHeader(name: f[0], occurrence: max(1, index))
                                       : .changeHeader(occurrence: max(1, index), field(f[0], v)))
            case .addRecipient, .addRecipientWithArgs:
                try require(reply == Milter.Reply.addRecipient.rawValue ? .addRecipients : .addRecipientsWithArgs, !fields.isEmpty)
                guard let m = Mailbox(path: fields[0]) else { throw MilterConnection.Failure(description: "bad recipient \(fields[0])") }
                let args = fields.count > 1 ? Self.parameters(fields[1]) : []
                edits.append(.addRecipient(m, parameters: args))
            case .deleteRecipient:
                try require(.deleteRecipients, !fields.isEmpty)
                guard let m = Mailbox(path: fields[0]) else { throw MilterConnection.Failure(description: "bad recipient \(fields[0])") }
                edits.append(.deleteRecipient(m))
            case .changeFrom:
                try require(.changeFrom, !fields.isEmpty)
                guard let path = ReversePath(path: fields[0]) else { throw MilterConnection.Failure(description: "bad sender \(fields[0])") }
                edits.append(.changeSender(path, parameters: fields.count > 1 ? Self.parameters(fields[1]) : []))
            case .replaceBody:
                try require(.changeBody, true)
                if body == nil { body = try BodyFile(directory: stage.temporaryDirectory) }
                try body!.append(payload)
            case .quarantine:
                try require(.quarantine, true)
                quarantine = fields.first ?? "milter"
            case .setSymbolList:
                continue
            case .accept, .continue:
                if var file = body {
                    edits.append(.replaceBody(path: try file.finish()))
                }
                body = nil
                let verdict: StageVerdict = quarantine.map { .quarantine(reason: "milter \(stage.stageName): \($0)") } ?? .continue
                return StageDecision(verdict, edits: edits)
            default:
                // A final refusal: the edits no longer matter.
                return StageDecision(try verdict(reply, payload))
            }
        }
    }

    /// A modification the milter did not ask for in negotiation is a protocol violation.
    private func require(_ action: Milter.Actions, _ wellFormed: Bool) throws {
        guard actions.contains(action) else {
            throw MilterConnection.Failure(description: "a modification it did not negotiate (\(action.rawValue))")
        }
        guard wellFormed else { throw MilterConnection.Failure(description: "a malformed modification") }
    }

    /// A header field from a milter. Values come without the space after the colon, which is put
    /// back; with HDR_LEADSPC the value is the exact text after the colon.
    private func field(_ name: String, _ v: String) -> HeaderField {
        let normalized = v.replacingLineEnds()
        if protocolFlags.contains(.headerLeadingSpace) { return HeaderField(name: name, value: normalized) }
        return .make(name: name, value: normalized)
    }

    static func parameters(_ text: String) -> [ESMTPParameter] {
        text.split(separator: " ").map { token in
            if let eq = token.firstIndex(of: "=") {
                return ESMTPParameter(keyword: String(token[..<eq]).uppercased(), value: String(token[token.index(after: eq)...]))
            }
            return ESMTPParameter(keyword: token.uppercased(), value: nil)
        }
    }
}

private extension String {
    /// Folded values from milters may use LF alone; header fields here use CRLF.
    func replacingLineEnds() -> String {
        var out = ""
        var previous: Character?
        for c in self {
            if c == "\n" && previous != "\r" { out += "\r\n" } else if c != "\r\n" { out.append(c) } else { out += "\r\n" }
            previous = c
        }
        return out
    }

    func components(separatedBy separator: String) -> [String] {
        split(separator: separator, omittingEmptySubsequences: false).map(String.init)
    }
}

/// A replacement body written by the milter, in a temporary file the spool takes over.
struct BodyFile {
    let path: String
    private var fd: Int32

    init(directory: String) throws {
        var template = Array("\(directory)/sluice-milter-body-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw MilterConnection.Failure(description: "cannot create a temporary file in \(directory)") }
        self.fd = fd
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    mutating func append(_ bytes: [UInt8]) throws {
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw MilterConnection.Failure(description: "cannot write the replacement body") }
            written += n
        }
    }

    /// Closes the file and hands its path over (the spool deletes it).
    mutating func finish() throws -> String {
        close(fd)
        fd = -1
        return path
    }

    func discard() {
        if fd >= 0 {
            close(fd)
            unlink(path)
        }
    }
}
