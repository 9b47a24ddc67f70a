import SMTPCore
import SluicePipeline
import SluiceStageAPI
#if canImport(Glibc)
import Glibc
#endif

/// Queues delivery status notifications (RFC 3464) back to the sender: failures, delay
/// warnings and the success notices NOTIFY=SUCCESS asks for, each a new message from `<>` (so
/// a notice never bounces).
struct BounceWriter: Sendable {
    let spool: Spool
    let hostname: String
    /// `[queue] bounce_size_limit`: the largest original returned whole for RET=FULL.
    let returnLimit: Int
    /// The destination for the original sender, if any route takes it.
    let route: @Sendable (Mailbox) -> String?

    /// Blocking: queues a notice about `entries` and returns its id, or nil when no route takes
    /// the sender (or the sender is `<>`).
    func write(for message: Spool.StoredMessage, entries: [DeliveryReport.Entry]) throws -> String? {
        guard !entries.isEmpty, let sender = message.envelope.sender.mailbox, let destination = route(sender) else { return nil }
        let id = QueueID.make()
        let original = message.envelope
        var report = DeliveryReport(id: id, hostname: hostname, original: original, sender: sender, entries: entries, returned: .headers([]))
        if report.headline == .failed && original.dsnReturn == .full {
            if message.messageLength <= returnLimit {
                report.returned = .message(try wholeMessage(message))
            } else {
                report.truncated = true
            }
        }
        if case .headers = report.returned { report.returned = .headers(try originalHeaders(message)) }
        let content = report.render()
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let envelope = SpoolEnvelope(
            id: id, sender: .null, senderParameters: [],
            recipients: [.init(address: sender, parameters: [], destination: destination)],
            client: .init(address: "127.0.0.1", port: 0, helo: hostname), protocolName: "local",
            receivedAt: Double(ts.tv_sec), size: content.count, body: original.body, smtputf8: report.international, quarantine: nil,
            trace: [TraceEntry(stage: "queue", phase: "bounce", outcome: "DSN (\(report.headline.rawValue)) for \(original.id)", micros: 0)]
        )
        try spool.writeGenerated(id: id, content: content, envelope: envelope)
        return id
    }

    /// The original header section (up to 64 KiB), for the text/rfc822-headers part.
    private func originalHeaders(_ message: Spool.StoredMessage) throws -> [UInt8] {
        let fd = try FileIO.openRead(message.path)
        defer { close(fd) }
        let start = try FileIO.pread(fd, count: min(message.contentLength, 65536), offset: 0, path: message.path)
        let section = HeaderSection.parse(message.prefix + start, atEnd: message.contentLength <= 65536)
        return section.fields.flatMap(\.wireBytes)
    }

    /// The whole message as delivered (prefix and content); only called within `returnLimit`.
    private func wholeMessage(_ message: Spool.StoredMessage) throws -> [UInt8] {
        let fd = try FileIO.openRead(message.path)
        defer { close(fd) }
        return message.prefix + (try FileIO.pread(fd, count: message.contentLength, offset: 0, path: message.path))
    }
}
