import SMTPCore
import SluiceStageAPI

/// The envelope as libmilter hands it over: `argv[0]` is the path (`<user@example.org>`, `<>`;
/// some MTAs and miltertest leave out the brackets), the rest are the ESMTP parameters
/// (`SIZE=1234`, `BODY=8BITMIME`). Read with SMTPCore's MAIL and RCPT grammar, so a milter and the
/// gateway understand an address the same way.
enum MilterEnvelope {
    /// The sender and the MAIL parameters. A parameter the grammar refuses is dropped (the MTA
    /// has accepted it already); a sender it refuses gets the grammar's reply.
    struct Sender: Hashable, Sendable {
        var path: ReversePath
        var parameters: MailParameters
        /// True when parameters were dropped because they did not parse.
        var droppedParameters: Bool
    }

    struct RecipientResult: Hashable, Sendable {
        var recipient: Recipient
        var droppedParameters: Bool
    }

    static func sender(_ argv: [String]) -> Result<Sender, SMTPReply> {
        guard let first = argv.first else { return .failure(SMTPReply(501, "5.5.4", "Syntax: MAIL FROM:<address>")) }
        let parser = SMTPCommandParser()
        let parameters = Array(argv.dropFirst())
        do throws(SMTPCommandError) {
            if case .mail(let path, let params) = try parser.parse(line("MAIL FROM:", first, parameters)) {
                return .success(Sender(path: path, parameters: params, droppedParameters: false))
            }
        } catch {
            guard !parameters.isEmpty else { return .failure(error.reply) }
        }
        do throws(SMTPCommandError) {
            // SMTPUTF8 still governs whether the address may be non-ASCII.
            let utf8 = parameters.filter { $0.uppercased() == "SMTPUTF8" }
            if case .mail(let path, let params) = try parser.parse(line("MAIL FROM:", first, utf8)) {
                return .success(Sender(path: path, parameters: params, droppedParameters: true))
            }
        } catch {
            return .failure(error.reply)
        }
        return .failure(SMTPReply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
    }

    /// - Parameters:
    ///   - utf8: the transaction's MAIL had SMTPUTF8 (RFC 6531), so the address may be non-ASCII.
    ///   - postmasterDomain: the domain of a bare `<Postmaster>` (RFC 5321 4.5.1).
    static func recipient(_ argv: [String], utf8: Bool, postmasterDomain: String) -> Result<RecipientResult, SMTPReply> {
        guard let first = argv.first else { return .failure(SMTPReply(501, "5.5.4", "Syntax: RCPT TO:<address>")) }
        let parser = SMTPCommandParser()
        let parameters = Array(argv.dropFirst())
        func recipient(_ path: ForwardPath, _ params: [ESMTPParameter], dropped: Bool) -> RecipientResult {
            switch path {
            case .mailbox(let m): RecipientResult(recipient: Recipient(m, parameters: params), droppedParameters: dropped)
            case .postmaster:
                RecipientResult(recipient: Recipient(Mailbox(localPart: "postmaster", domain: postmasterDomain), parameters: params), droppedParameters: dropped)
            }
        }
        do throws(SMTPCommandError) {
            if case .rcpt(let path, let params) = try parser.parse(line("RCPT TO:", first, parameters), transactionUTF8: utf8) {
                return .success(recipient(path, params, dropped: false))
            }
        } catch {
            guard !parameters.isEmpty else { return .failure(error.reply) }
        }
        do throws(SMTPCommandError) {
            if case .rcpt(let path, _) = try parser.parse(line("RCPT TO:", first, []), transactionUTF8: utf8) {
                return .success(recipient(path, [], dropped: true))
            }
        } catch {
            return .failure(error.reply)
        }
        return .failure(SMTPReply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
    }

    /// `MAIL FROM:<path> PARAM ...` as the client would have sent it.
    private static func line(_ verb: String, _ path: String, _ parameters: [String]) -> [UInt8] {
        let bracketed = path.hasPrefix("<") ? path : "<\(path)>"
        return Array(([verb + bracketed] + parameters).joined(separator: " ").utf8)
    }

    /// Parameters as the milter API writes them: `KEY=value KEY2`, or nil for none.
    static func text(_ parameters: [ESMTPParameter]) -> String? {
        parameters.isEmpty ? nil : parameters.map(\.description).joined(separator: " ")
    }
}
