import SMTPCore
import SluiceSpool
#if canImport(Glibc)
import Glibc
#endif

/// The text of a delivery status notification (RFC 3464; RFC 6533's `global` types when the
/// original message was SMTPUTF8): a human-readable part, the machine-readable status, and the
/// original message or its header section.
struct DeliveryReport {
    /// RFC 3464 2.3.3 `Action`.
    enum Action: String, Sendable {
        /// The recipient failed for good.
        case failed
        /// The recipient is still being retried (a delay warning).
        case delayed
        /// Delivered into a mailbox (maildir, LMTP), reported because NOTIFY asked for SUCCESS.
        case delivered
        /// Passed to a next hop that does not offer DSN, so no further notice can come.
        case relayed
    }

    /// One recipient of the report.
    struct Entry: Sendable {
        var recipient: SpoolEnvelope.SpooledRecipient
        var reply: SMTPReply
        var action: Action
    }

    /// What of the original goes in the third part.
    enum Returned {
        /// The header section (CRLF lines).
        case headers([UInt8])
        /// The whole message (RET=FULL, within the size limit).
        case message([UInt8])
    }

    var id: String
    var hostname: String
    var original: SpoolEnvelope
    var sender: Mailbox
    var entries: [Entry]
    var returned: Returned
    /// The message was too big to return whole though RET=FULL asked for it.
    var truncated = false

    /// The original was SMTPUTF8, so the report uses the `global` types and travels as SMTPUTF8.
    var international: Bool { original.smtputf8 }

    /// The report's headline: failures first, then delays, then successes.
    var headline: Action {
        if entries.contains(where: { $0.action == .failed }) { return .failed }
        if entries.contains(where: { $0.action == .delayed }) { return .delayed }
        return .delivered
    }

    var subject: String {
        switch headline {
        case .failed: "Undelivered Mail Returned to Sender"
        case .delayed: "Delayed Mail (still being retried)"
        case .delivered, .relayed: "Successful Mail Delivery Report"
        }
    }

    func render(now: String = RFC5322Date.now()) -> [UInt8] {
        let boundary = "\(id)/\(hostname)"
        let global = international
        var s = ""
        s += "Received: by \(hostname) (Sluice) id \(id); \(now)\r\n"
        s += "From: Mail Delivery System <MAILER-DAEMON@\(hostname)>\r\n"
        s += "To: <\(sender)>\r\n"
        s += "Subject: \(subject)\r\n"
        s += "Date: \(now)\r\n"
        s += "Message-ID: <\(id).bounce@\(hostname)>\r\n"
        s += "Auto-Submitted: auto-replied\r\n"
        s += "MIME-Version: 1.0\r\n"
        s += "Content-Type: multipart/report; report-type=\(global ? "global-delivery-status" : "delivery-status");\r\n\tboundary=\"\(boundary)\"\r\n"
        s += "\r\nThis is a MIME-encapsulated message.\r\n\r\n"
        s += "--\(boundary)\r\n"
        s += "Content-Description: Notification\r\nContent-Type: text/plain; charset=\(global ? "utf-8" : "us-ascii")\r\n\r\n"
        s += "This is the mail system at host \(hostname).\r\n\r\n"
        s += explanation
        for e in entries { s += "<\(e.recipient.address)>: \(e.reply.description.replacingNewlines())\r\n" }
        if truncated { s += "\r\nThe message was too big to return whole; its header section follows.\r\n" }
        s += "\r\n--\(boundary)\r\n"
        s += "Content-Description: Delivery report\r\nContent-Type: \(global ? "message/global-delivery-status" : "message/delivery-status")\r\n\r\n"
        s += "Reporting-MTA: dns; \(hostname)\r\n"
        if let envid = original.envelopeID { s += "Original-Envelope-Id: \(envid.replacingNewlines())\r\n" }
        s += "X-Sluice-Queue-ID: \(original.id)\r\n"
        s += "Arrival-Date: \(RFC5322Date.format(time_t(original.receivedAt)))\r\n"
        for e in entries {
            let dsn = RecipientDSN(parameters: e.recipient.parameters)
            s += "\r\n"
            if let orcpt = dsn.originalRecipient { s += "Original-Recipient: \(orcpt.type);\(orcpt.address.replacingNewlines())\r\n" }
            let address = "\(e.recipient.address)"
            let type = global && address.utf8.contains(where: { $0 >= 0x80 }) ? "utf-8" : "rfc822"
            s += "Final-Recipient: \(type); \(address)\r\n"
            s += "Action: \(e.action.rawValue)\r\n"
            s += "Status: \(Self.status(e.reply))\r\n"
            s += "Diagnostic-Code: smtp; \(e.reply.description.replacingNewlines())\r\n"
        }
        s += "\r\n--\(boundary)\r\n"
        var out = Array(s.utf8)
        switch returned {
        case .headers(let headers):
            let type = global ? "message/global-headers" : "text/rfc822-headers"
            out += Array("Content-Description: Undelivered Message Headers\r\nContent-Type: \(type)\r\n\r\n".utf8)
            out += headers
        case .message(let message):
            let type = global ? "message/global" : "message/rfc822"
            out += Array("Content-Description: Undelivered Message\r\nContent-Type: \(type)\r\n\r\n".utf8)
            out += message
            if let last = message.last, last != 0x0A { out += [0x0D, 0x0A] }
        }
        out += Array("\r\n--\(boundary)--\r\n".utf8)
        return out
    }

    private var explanation: String {
        switch headline {
        case .failed:
            "Your message could not be delivered to one or more recipients.\r\nThe mail system said:\r\n\r\n"
        case .delayed:
            "Your message could not be delivered yet to one or more recipients; delivery is still being tried.\r\n"
                + "This is only a warning: you do not need to send the message again.\r\nThe mail system said:\r\n\r\n"
        case .delivered, .relayed:
            "Your message was delivered to the recipients below, as you asked (a delivery status notification).\r\n"
                + "Recipients marked relayed went on to a mail system that sends no further notices.\r\n\r\n"
        }
    }

    /// A refusal keeps its enhanced code; without one, 2.0.0, 4.0.0 or 5.0.0 by the reply's class.
    static func status(_ reply: SMTPReply) -> String {
        if let e = reply.enhancedCode { return "\(e.statusClass).\(e.subject).\(e.detail)" }
        return reply.isPositive ? "2.0.0" : reply.isTransientFailure ? "4.0.0" : "5.0.0"
    }
}
