import SluicePipeline
import SluiceStageAPI

/// The chain's phases as the session asks for them.
extension StageChain {
    /// The stages of a phase before any recipient: connect, HELO, MAIL.
    func run(_ phase: StagePhase, session: SessionInfo, transaction: TransactionInfo?) async -> PhaseResult {
        switch phase {
        case .connect: return await connect(session: session)
        case .helo: return await helo(session: session)
        case .mailFrom:
            guard let transaction else { break }
            return await mailFrom(session: session, transaction: transaction)
        default: break
        }
        return PhaseResult(verdict: .continue, trace: [])
    }

    /// The stages of RCPT for one recipient.
    func run(recipient: Recipient, session: SessionInfo, transaction: TransactionInfo?) async -> PhaseResult {
        guard let transaction else { return PhaseResult(verdict: .continue, trace: []) }
        return await rcptTo(recipient, session: session, transaction: transaction)
    }

    /// Data-phase stages on what the session gives them: the header section (and what followed
    /// it as the first body chunk), or `chunk` as body.
    func run(_ feed: DataFeed, chunk: @autoclosure () -> [UInt8], session: SessionInfo, transaction: TransactionInfo) async -> PhaseResult {
        switch feed {
        case .body:
            return await bodyChunk(chunk(), session: session, transaction: transaction)
        case .headers(let fields, let rest):
            let h = await headers(fields, session: session, transaction: transaction)
            guard case .continue = h.verdict, !rest.isEmpty else { return h }
            let b = await bodyChunk(rest, session: session, transaction: transaction)
            return PhaseResult(verdict: b.verdict, trace: h.trace + b.trace)
        }
    }
}
