import SMTPCore
import SluicePipeline
#if canImport(Glibc)
import Glibc
#endif

/// Writes delivery status notifications (RFC 3464) for failed recipients back to the sender,
/// as new queued messages from `<>` (so a bounce never bounces).
struct BounceWriter: Sendable {
    let spool: Spool
    let hostname: String
    /// The destination for the original sender, if any route takes it.
    let route: @Sendable (Mailbox) -> String?

    /// Blocking: queues the DSN and returns its id, or nil when no route takes the sender.
    /// What the notification reports (RFC 3464 `Action`).
    enum Kind: String, Sendable {
        /// The recipients failed for good.
        case failed
        /// The recipients are still being retried (a delay warning).
        case delayed
    }

    func write(for message: Spool.StoredMessage, failures: [(SpoolEnvelope.SpooledRecipient, SMTPReply)], kind: Kind = .failed) throws -> String? {
        guard let sender = message.envelope.sender.mailbox, let destination = route(sender) else { return nil }
        let headers = try originalHeaders(message)
        let id = QueueID.make()
        let content = Array(Self.report(
            id: id, original: message.envelope, failures: failures, headers: headers, hostname: hostname, to: sender, kind: kind
        ).utf8)
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let envelope = SpoolEnvelope(
            id: id, sender: .null, senderParameters: [],
            recipients: [.init(address: sender, parameters: [], destination: destination)],
            client: .init(address: "127.0.0.1", port: 0, helo: hostname), protocolName: "local",
            receivedAt: Double(ts.tv_sec), size: content.count, body: nil, smtputf8: false, quarantine: nil,
            trace: [TraceEntry(stage: "queue", phase: "bounce", outcome: "DSN for \(message.envelope.id)", micros: 0)]
        )
        try spool.writeGenerated(id: id, content: content, envelope: envelope)
        return id
    }

    /// The original header section (up to 64 KiB), for the text/rfc822-headers part.
    private func originalHeaders(_ message: Spool.StoredMessage) throws -> String {
        let fd = try FileIO.openRead(message.path)
        defer { close(fd) }
        let start = try FileIO.pread(fd, count: min(message.contentLength, 65536), offset: 0, path: message.path)
        let section = HeaderSection.parse(message.prefix + start, atEnd: message.contentLength <= 65536)
        return section.fields.map { "\($0.name):\($0.value)\r\n" }.joined()
    }

    static func report(
        id: String, original: SpoolEnvelope, failures: [(SpoolEnvelope.SpooledRecipient, SMTPReply)],
        headers: String, hostname: String, to sender: Mailbox, kind: Kind = .failed
    ) -> String {
        let boundary = "\(id)/\(hostname)"
        let now = RFC5322Date.now()
        var s = ""
        s += "Received: by \(hostname) (Sluice) id \(id); \(now)\r\n"
        s += "From: Mail Delivery System <MAILER-DAEMON@\(hostname)>\r\n"
        s += "To: <\(sender)>\r\n"
        s += kind == .failed ? "Subject: Undelivered Mail Returned to Sender\r\n" : "Subject: Delayed Mail (still being retried)\r\n"
        s += "Date: \(now)\r\n"
        s += "Message-ID: <\(id).bounce@\(hostname)>\r\n"
        s += "Auto-Submitted: auto-replied\r\n"
        s += "MIME-Version: 1.0\r\n"
        s += "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"\(boundary)\"\r\n"
        s += "\r\nThis is a MIME-encapsulated message.\r\n\r\n"
        s += "--\(boundary)\r\n"
        s += "Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        s += "This is the mail system at host \(hostname).\r\n\r\n"
        s += kind == .failed
            ? "Your message could not be delivered to one or more recipients.\r\n"
            : "Your message could not be delivered yet to one or more recipients; delivery is still being tried.\r\nThis is only a warning: you do not need to send the message again.\r\n"
        s += "The mail system said:\r\n\r\n"
        for (rcpt, reply) in failures { s += "<\(rcpt.address)>: \(reply.description.replacingNewlines())\r\n" }
        s += "\r\n--\(boundary)\r\n"
        s += "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
        s += "Reporting-MTA: dns; \(hostname)\r\n"
        s += "X-Sluice-Queue-ID: \(original.id)\r\n"
        s += "Arrival-Date: \(RFC5322Date.format(time_t(original.receivedAt)))\r\n"
        for (rcpt, reply) in failures {
            // A permanent refusal keeps its code; an expired deferral is reported as 4.x.x (RFC 3463 X.4.7).
            let status = reply.enhancedCode.map { "\($0.statusClass).\($0.subject).\($0.detail)" } ?? (reply.isTransientFailure ? "4.0.0" : "5.0.0")
            s += "\r\nFinal-Recipient: rfc822; \(rcpt.address)\r\n"
            s += "Action: \(kind.rawValue)\r\n"
            s += "Status: \(status)\r\n"
            s += "Diagnostic-Code: smtp; \(reply.description.replacingNewlines())\r\n"
        }
        s += "\r\n--\(boundary)\r\n"
        s += "Content-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        s += headers
        s += "\r\n--\(boundary)--\r\n"
        return s
    }
}
