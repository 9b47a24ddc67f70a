import Logging
import NIOSSL
import SMTPCore
import SluicePipeline
import SluiceStageAPI

/// The session's log lines: one per refused command (like Postfix's NOQUEUE lines) and one per
/// transaction.
extension Logger {
    /// A refused command: what was asked, what was answered. Nothing for other actions.
    func refused(_ action: SessionStateMachine.Action, command: String, queueID: String?) {
        guard case .reply(let replies, _) = action, let reply = replies.first, reply.code >= 400 else { return }
        info("refused", metadata: ["command": "\(command)", "queue_id": "\(queueID ?? "")", "reply": "\(reply)"])
    }

    /// A refused command line, its control octets shown as `?` (and only its first 200 octets).
    func refused(_ action: SessionStateMachine.Action, line: some Collection<UInt8>, queueID: String?) {
        guard case .reply(let replies, _) = action, let reply = replies.first, reply.code >= 400 else { return }
        let shown = line.prefix(200).map { $0 < 0x20 || $0 == 0x7F ? UInt8(ascii: "?") : $0 }
        refused(action, command: String(decoding: shown, as: UTF8.self), queueID: queueID)
    }

    /// The one line of a transaction that ended with `reply`.
    func transaction(_ tx: SessionStateMachine.Transaction, of machine: SessionStateMachine, reply: SMTPReply?) {
        var metadata = TransactionLog.metadata(
            queueID: tx.queueID, helo: machine.session.heloName, sender: tx.sender, recipients: tx.recipients,
            size: tx.data?.size ?? 0, trace: machine.sessionTrace + tx.trace
        )
        metadata["reply"] = "\(reply?.description ?? "")"
        info("transaction", metadata: metadata)
    }
}

extension Logger {
    /// An error on the channel, which then closes: TLS failures at info, the rest at debug.
    func channelError(_ error: any Error) {
        if let tlsError = error as? NIOSSLError, case .uncleanShutdown = tlsError {
            debug("TLS closed without close_notify")
        } else if error is NIOSSLError || error is BoringSSLError {
            info("TLS failed", metadata: ["error": "\(error)"])
        } else {
            debug("channel error", metadata: ["error": "\(error)"])
        }
    }
}
