import NIOPosix
import SMTPCore
import SluiceMessage
import SluiceSpool
#if canImport(Glibc)
import Glibc
#endif

/// Queues delivery status notifications (RFC 3464) back to the sender: failures, delay
/// warnings and the success notices NOTIFY=SUCCESS asks for, each a new message from `<>` (so
/// a notice never bounces).
struct BounceWriter: Sendable {
    let store: any QueueStore
    /// Reads file content.
    let threadPool: NIOThreadPool
    let hostname: String
    /// `[queue] bounce_size_limit`: the largest original returned whole for RET=FULL.
    let returnLimit: Int
    /// The destination for the original sender, if any route takes it.
    let route: @Sendable (Mailbox) -> Destination?

    /// Queues a notice about `entries` and returns its id, or nil when no route takes the sender
    /// (or the sender is `<>`).
    func write(for message: QueuedMessage, content: MessageContent, entries: [DeliveryReport.Entry]) async throws -> String? {
        guard !entries.isEmpty, let sender = message.envelope.sender.mailbox, let destination = route(sender) else { return nil }
        let id = QueueID.make()
        let original = message.envelope
        var report = DeliveryReport(id: id, hostname: hostname, original: original, sender: sender, entries: entries, returned: .headers([]))
        if report.headline == .failed && original.dsnReturn == .full {
            if message.messageLength <= returnLimit {
                report.returned = .message(message.prefix + (try await content.read(upTo: message.contentLength, threadPool: threadPool)))
            } else {
                report.truncated = true
            }
        }
        if case .headers = report.returned { report.returned = .headers(try await originalHeaders(message, content)) }
        let rendered = report.render()
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let envelope = SpoolEnvelope(
            id: id, sender: .null, senderParameters: [],
            recipients: [.init(address: sender, parameters: [], destination: destination)],
            client: .init(address: "127.0.0.1", port: 0, helo: hostname), protocolName: "local",
            receivedAt: Double(ts.tv_sec), size: rendered.count, body: original.body, smtputf8: report.international, quarantine: nil,
            trace: [TraceEntry(stage: "queue", phase: "bounce", outcome: "DSN (\(report.headline.rawValue)) for \(original.id)", micros: 0)]
        )
        try await store.enqueueGenerated(content: rendered, envelope: envelope)
        return id
    }

    /// The original header section (up to 64 KiB), for the text/rfc822-headers part.
    private func originalHeaders(_ message: QueuedMessage, _ content: MessageContent) async throws -> [UInt8] {
        let start = try await content.read(upTo: 65536, threadPool: threadPool)
        let section = HeaderSection.parse(message.prefix + start, atEnd: message.contentLength <= 65536)
        return section.fields.flatMap(\.wireBytes)
    }
}
