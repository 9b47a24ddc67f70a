import SMTPCore
import SluiceStageAPI

/// The decision after the last byte of a message, as Postfix's cleanup makes it: pure, with no
/// channel, spool or MTA behind it. The gateway's session and `sluice milter` both ask it, so
/// the rules live in one place:
///
/// - the draft end-of-message stages start from drops `Authentication-Results` fields that claim
///   our authserv-id (RFC 8601 5: they did not come from us);
/// - what stages recorded goes on top (`Authentication-Results` for `hostname`, the trace
///   fields such as `Received-SPF`);
/// - a discard or quarantine held back from an earlier phase wins over end of message's
///   `continue` (a refusal at end of message wins over it);
/// - each recipient, original or added by a stage, gets its destination from `route`; an added
///   one with none is dropped (and traced); with no recipient left the message is discarded.
public struct Intake: Sendable {
    /// The authserv-id of our Authentication-Results.
    public var hostname: String

    public init(hostname: String) {
        self.hostname = hostname
    }

    /// What became of the message.
    public enum Decision<Destination> {
        /// Refused for good with this reply (a stage's reject).
        case reject(SMTPReply)
        /// Refused for now with this reply (a stage's tempfail).
        case tempfail(SMTPReply)
        /// Refused, and the session closes.
        case disconnect(SMTPReply)
        /// Accepted and dropped: a stage discarded it, or no recipient is left (`trace` says
        /// which recipients were dropped for want of a route).
        case discard(trace: [TraceEntry])
        /// Accepted and held: spooled for an operator to release or delete, never delivered on
        /// its own (a stage's quarantine, with its reason).
        case quarantine(Accepted<Destination>, reason: String)
        /// Accepted: to be spooled for delivery (or handed back to the MTA).
        case spool(Accepted<Destination>)

        /// The accepted message, spooled or held.
        public var accepted: Accepted<Destination>? {
            switch self {
            case .spool(let a), .quarantine(let a, _): a
            case .reject, .tempfail, .disconnect, .discard: nil
            }
        }
    }

    /// An accepted message.
    public struct Accepted<Destination> {
        /// The message as the stages left it, recorded fields on top.
        public var draft: MessageDraft
        /// Every recipient left, with its destination, in order.
        public var recipients: [(recipient: Recipient, destination: Destination)]
        /// Trace lines of the intake itself (recipients dropped for want of a route).
        public var trace: [TraceEntry]
    }

    /// The draft end-of-message stages start from.
    public func initialDraft(headers: [HeaderField], sender: ReversePath, recipients: [Recipient]) -> MessageDraft {
        var draft = MessageDraft(headers: headers, sender: sender, recipients: recipients)
        for edit in AuthenticationResultsHeader.removeSpoofed(from: headers, hostname: hostname) {
            draft.apply(edit)
        }
        return draft
    }

    /// Decides, from what end of message gave.
    /// - Parameters:
    ///   - results: what the transaction's stages recorded.
    ///   - held: a discard or quarantine from an earlier phase.
    ///   - route: the destination of a recipient; nil drops it.
    public func decide<Destination>(
        _ eom: StageChain.EndOfMessageResult, results: ResultRecorder?, held: StageVerdict?,
        route: (Recipient) -> Destination?
    ) -> Decision<Destination> {
        var draft = eom.draft
        if let results { draft.prependRecorded(results, hostname: hostname) }
        var verdict = eom.verdict
        if case .continue = verdict, let held { verdict = held }
        var quarantine: String?
        switch verdict {
        case .reject(let reply): return .reject(reply)
        case .tempfail(let reply): return .tempfail(reply)
        case .disconnect(let reply): return .disconnect(reply)
        case .discard: return .discard(trace: [])
        case .quarantine(let reason): quarantine = reason
        case .continue, .accept: break
        }
        var recipients: [(recipient: Recipient, destination: Destination)] = []
        var trace: [TraceEntry] = []
        for r in draft.recipients {
            if let destination = route(r) {
                recipients.append((r, destination))
            } else {
                trace.append(TraceEntry(stage: "core", phase: "eom", outcome: "dropped added recipient \(r): no route", micros: 0))
            }
        }
        guard !recipients.isEmpty else { return .discard(trace: trace) }
        let accepted = Accepted(draft: draft, recipients: recipients, trace: trace)
        return quarantine.map { .quarantine(accepted, reason: $0) } ?? .spool(accepted)
    }
}

extension Intake.Accepted: Sendable where Destination: Sendable {}
extension Intake.Decision: Sendable where Destination: Sendable {}
