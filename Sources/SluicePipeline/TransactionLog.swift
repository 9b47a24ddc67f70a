import Logging
import SMTPCore
import SluiceStageAPI

/// The one log line per transaction (`transaction`), the same from the gateway and from
/// `sluice milter`: each adds how it ended (`reply`, or `result` and `edits`).
public enum TransactionLog {
    public static func metadata(
        queueID: String, helo: String?, sender: ReversePath, recipients: [Recipient], size: Int, trace: [TraceEntry]
    ) -> Logger.Metadata {
        [
            "queue_id": "\(queueID)",
            "helo": "\(helo ?? "")",
            "from": "\(sender)",
            "to": "\(recipients.map(\.description).joined(separator: ","))",
            "size": "\(size)",
            "stages": "\(trace.map(\.description).joined(separator: "; "))",
        ]
    }
}
