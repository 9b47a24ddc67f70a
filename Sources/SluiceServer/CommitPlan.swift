import SMTPCore
import SluicePipeline
import SluiceSpool
import SluiceStageAPI

/// What the session writes for a message the intake accepted: the envelope (recipients with
/// their destinations, the client, the DSN requests, the trace) and how the content changes.
/// Pure: the handler only hands the result to the draft's `commit`.
enum CommitPlan {
    /// The facts of the session the envelope records.
    struct Origin {
        var clientAddress: String
        var clientPort: Int
        var heloName: String?
        var protocolName: String
        var receivedAt: Double
    }

    /// A recipient's destination: the one its RCPT was routed to, or, for one a stage added,
    /// the route table's (as for a trusted client).
    static func destination(of recipient: Recipient, in tx: SessionStateMachine.Transaction, routes: RouteTable) -> Destination? {
        if let i = tx.recipients.firstIndex(of: recipient) { return tx.destinations[i] }
        return try? routes.destination(for: recipient.mailbox, trusted: true).get()
    }

    static func make(
        _ accepted: Intake.Accepted<Destination>, quarantine: String?, section: HeaderSection, transaction tx: SessionStateMachine.Transaction,
        origin: Origin, trace: [TraceEntry]
    ) -> DraftCommit {
        let edited = accepted.draft
        let recipients = accepted.recipients.map {
            SpoolEnvelope.SpooledRecipient(address: $0.recipient.mailbox, parameters: $0.recipient.parameters, destination: $0.destination)
        }
        // A stage that changed the sender with arguments replaced MAIL's: RET and ENVID come from those.
        let dsn = edited.senderParameters.isEmpty ? tx.parameters : (try? MailParameters(edited.senderParameters)) ?? tx.parameters
        let envelope = SpoolEnvelope(
            id: tx.queueID, sender: edited.sender, senderParameters: edited.senderParameters, recipients: recipients,
            client: .init(address: origin.clientAddress, port: origin.clientPort, helo: origin.heloName),
            protocolName: origin.protocolName, receivedAt: origin.receivedAt,
            size: tx.data?.size ?? 0, body: tx.parameters.body, smtputf8: tx.parameters.smtputf8, quarantine: quarantine,
            trace: trace, dsnReturn: dsn.ret, envelopeID: dsn.envelopeID
        )
        var commit = DraftCommit(
            envelope: envelope, headers: edited.headersChanged ? edited.headers : nil,
            bodyOffset: section.bodyOffset, replacementBody: edited.replacementBodyPath, quarantine: quarantine != nil
        )
        // Fields only put on top (Received-SPF, Authentication-Results, ...) need no rewrite
        // of the spooled content: they travel in the envelope.
        let fields = edited.headers
        if edited.headersChanged, edited.replacementBodyPath == nil,
           fields.count > section.fields.count, Array(fields.suffix(section.fields.count)) == section.fields {
            commit.prepend = Array(fields.prefix(fields.count - section.fields.count))
            commit.headers = nil
        }
        return commit
    }
}
