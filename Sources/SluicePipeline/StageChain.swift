import SMTPCore
import SluiceStageAPI

/// The ordered stages from `pipeline.conf`, checked once at startup and then only run.
///
/// At each phase the hooked stages run in order; the first verdict other than `continue` ends
/// the phase (`accept` ends it too, as a pass). A stage that throws or times out gets its
/// `on_error` verdict. Every call lands in the trace.
public struct StageChain: Sendable {
    public let entries: [StageEntry]
    private let hooked: [StagePhase: [StageEntry]]
    /// Names of the stages whose data phase is replayed at end of message (see `replaysData`).
    private let replayed: Set<String>

    /// The outcome of one phase.
    public struct PhaseResult: Sendable {
        public var verdict: StageVerdict
        public var trace: [TraceEntry]
        public init(verdict: StageVerdict, trace: [TraceEntry]) {
            self.verdict = verdict
            self.trace = trace
        }
    }

    /// The outcome of end of message: the verdict and the edited message.
    public struct EndOfMessageResult: Sendable {
        public var verdict: StageVerdict
        public var draft: MessageDraft
        public var trace: [TraceEntry]
        public init(verdict: StageVerdict, draft: MessageDraft, trace: [TraceEntry]) {
            self.verdict = verdict
            self.draft = draft
            self.trace = trace
        }
    }

    /// Builds the chain and rejects unsafe orders: no stage that changes headers or the body may
    /// run after a stage that seals the message (a DKIM signer), and instance names are unique.
    public init(_ entries: [StageEntry]) throws(ChainError) {
        var names = Set<String>()
        var sealer: StageEntry?
        for entry in entries {
            guard names.insert(entry.name).inserted else {
                throw ChainError("two stages are named '\(entry.name)': give one a distinct `name`")
            }
            let caps = entry.stage.capabilities
            if let sealer, !caps.intersection(.modifiesMessage).isEmpty {
                throw ChainError(
                    "stage '\(entry.name)' (\(caps.intersection(.modifiesMessage))) runs after '\(sealer.name)', which seals the message: move '\(entry.name)' before '\(sealer.name)'"
                )
            }
            if caps.contains(.sealsMessage) { sealer = entry }
        }
        self.entries = entries
        let replayed = Self.replayedStages(entries)
        var hooked: [StagePhase: [StageEntry]] = [:]
        for phase in StagePhase.allCases {
            hooked[phase] = entries.filter { $0.stage.phases.contains(phase) }
        }
        // A replayed stage gets no streamed data; it runs at end of message in its place.
        hooked[.data] = hooked[.data]?.filter { !replayed.contains($0.name) }
        hooked[.endOfMessage] = entries.filter { $0.stage.phases.contains(.endOfMessage) || replayed.contains($0.name) }
        self.hooked = hooked
        self.replayed = replayed
    }

    /// The stages that read the message as it streams (they hook `data`) but come after a stage
    /// that may change the header section or the body at end of message. What streamed in is not
    /// what they must judge or sign, so their data phase waits: at end of message, in chain
    /// order, each is given the header section and body as the stages before it left them, then
    /// its own end of message. This is what Postfix's cleanup does with milters: each one is sent
    /// the queued message with the earlier milters' changes applied. A chain with no such editor
    /// before a streaming stage keeps the streaming path (declared capabilities decide).
    static func replayedStages(_ entries: [StageEntry]) -> Set<String> {
        var editorBefore = false
        var replayed = Set<String>()
        for entry in entries {
            let stage = entry.stage
            if editorBefore && stage.phases.contains(.data) { replayed.insert(entry.name) }
            if stage.phases.contains(.endOfMessage) && !stage.capabilities.isDisjoint(with: .modifiesMessage) {
                editorBefore = true
            }
        }
        return replayed
    }

    /// True when the stage named `name` gets its data phase at end of message, from the edited
    /// message, instead of as the message streams in.
    public func replaysData(_ name: String) -> Bool { replayed.contains(name) }

    /// True when some stage hooks `phase`; the session skips the phase otherwise.
    public func hooks(_ phase: StagePhase) -> Bool { !(hooked[phase] ?? []).isEmpty }

    /// EHLO keywords contributed by stages, in chain order.
    public var ehloKeywords: [String] { entries.flatMap { $0.stage.ehloKeywords } }

    /// The smallest message size limit any stage declares.
    public var messageSizeLimit: Int? { entries.compactMap { $0.stage.messageSizeLimit }.min() }

    private func run(
        _ phase: StagePhase, _ call: @escaping @Sendable (any Stage) async throws -> StageVerdict
    ) async -> PhaseResult {
        var trace: [TraceEntry] = []
        for entry in hooked[phase] ?? [] {
            let (verdict, micros, failure) = await Self.invoke(entry) { try await call(entry.stage) }
            trace.append(TraceEntry(stage: entry.name, phase: phase.rawValue, outcome: failure ?? verdict.description, micros: micros))
            switch verdict {
            case .continue: continue
            case .accept: return PhaseResult(verdict: .continue, trace: trace)
            default: return PhaseResult(verdict: verdict, trace: trace)
            }
        }
        return PhaseResult(verdict: .continue, trace: trace)
    }

    /// Calls a stage under its timeout; a failure becomes its `on_error` verdict.
    private static func invoke<T: Sendable>(
        _ entry: StageEntry, _ body: @escaping @Sendable () async throws -> T
    ) async -> (T, Int, String?) where T: VerdictCarrying {
        let start = ContinuousClock.now
        func micros() -> Int {
            let d = ContinuousClock.now - start
            return Int(d.components.seconds * 1_000_000 + d.components.attoseconds / 1_000_000_000_000)
        }
        do {
            let value = try await withTimeout(entry.timeout, body)
            return (value, micros(), nil)
        } catch {
            let why = error is StageTimeout ? "timed out after \(entry.timeout)" : "failed: \(error)"
            let verdict = entry.onError.verdict(stage: entry.name, why: why)
            return (T(failureVerdict: verdict), micros(), "\(why) -> \(verdict)")
        }
    }

    public func connect(session: SessionInfo) async -> PhaseResult {
        await run(.connect) { try await $0.connect(session: session) }
    }

    public func helo(session: SessionInfo) async -> PhaseResult {
        await run(.helo) { try await $0.helo(session: session) }
    }

    public func mailFrom(session: SessionInfo, transaction: TransactionInfo) async -> PhaseResult {
        await run(.mailFrom) { try await $0.mailFrom(session: session, transaction: transaction) }
    }

    public func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async -> PhaseResult {
        await run(.rcptTo) { try await $0.rcptTo(recipient, session: session, transaction: transaction) }
    }

    public func headers(_ headers: [HeaderField], session: SessionInfo, transaction: TransactionInfo) async -> PhaseResult {
        await run(.data) { try await $0.headers(headers, session: session, transaction: transaction) }
    }

    public func bodyChunk(_ chunk: [UInt8], session: SessionInfo, transaction: TransactionInfo) async -> PhaseResult {
        await run(.data) { try await $0.bodyChunk(chunk, session: session, transaction: transaction) }
    }

    /// Runs end of message. Each stage sees the message with the edits of the stages before it;
    /// an edit the stage did not declare the capability for counts as a stage failure. A stage
    /// whose data phase is replayed (`replaysData`) is first given the edited header section and
    /// body, streamed from `body`, never held whole in memory.
    /// - Parameters:
    ///   - body: makes the body reader for the current draft (original or replaced body).
    ///   - hiding: a field of the draft that replayed stages are not shown: the gateway's own
    ///     `Received:`, which Postfix does not show its milters either.
    public func endOfMessage(
        draft initial: MessageDraft, receivedSize: Int, body: @escaping @Sendable (MessageDraft) -> MessageBody,
        hiding ownField: HeaderField? = nil, session: SessionInfo, transaction: TransactionInfo
    ) async -> EndOfMessageResult {
        var draft = initial
        var trace: [TraceEntry] = []
        for entry in hooked[.endOfMessage] ?? [] {
            var edited = transaction
            edited.sender = draft.sender
            edited.recipients = draft.recipients
            let tx = edited
            if replayed.contains(entry.name) {
                var headers = draft.headers
                if let ownField, let i = headers.firstIndex(of: ownField) { headers.remove(at: i) }
                let data = await replayData(entry, headers: headers, body: body(draft), session: session, transaction: tx)
                trace.appendFoldingData(data.trace)
                switch data.verdict {
                case .continue, .accept: break
                default: return EndOfMessageResult(verdict: data.verdict, draft: draft, trace: trace)
                }
                guard entry.stage.phases.contains(.endOfMessage) else { continue }
            }
            let view = MessageView(headers: draft.headers, body: body(draft), receivedSize: receivedSize)
            var (decision, micros, failure) = await Self.invoke(entry) {
                try await entry.stage.endOfMessage(view, session: session, transaction: tx)
            }
            if failure == nil, let bad = decision.edits.first(where: { !entry.stage.capabilities.contains($0.requiredCapability) }) {
                let verdict = entry.onError.verdict(stage: entry.name, why: "undeclared edit")
                failure = "made an edit it did not declare (\(bad): needs \(bad.requiredCapability)) -> \(verdict)"
                decision = StageDecision(verdict)
            }
            let phase = StagePhase.endOfMessage.rawValue
            let outcome = failure ?? decision.verdict.description + (decision.note.map { " [\($0)]" } ?? "")
            trace.append(TraceEntry(stage: entry.name, phase: phase, outcome: outcome, micros: micros))
            for edit in decision.edits {
                draft.apply(edit)
                trace.append(TraceEntry(stage: entry.name, phase: phase, outcome: "edit: \(edit)", micros: 0))
            }
            switch decision.verdict {
            case .continue: continue
            case .accept: return EndOfMessageResult(verdict: .continue, draft: draft, trace: trace)
            default: return EndOfMessageResult(verdict: decision.verdict, draft: draft, trace: trace)
            }
        }
        return EndOfMessageResult(verdict: .continue, draft: draft, trace: trace)
    }

    /// One stage's data phase from the edited message: the header section, then the body chunk
    /// by chunk, each call under the stage's timeout. `accept` ends the stage's data phase early.
    private func replayData(
        _ entry: StageEntry, headers: [HeaderField], body: MessageBody, session: SessionInfo, transaction: TransactionInfo
    ) async -> PhaseResult {
        let phase = StagePhase.data.rawValue
        var trace: [TraceEntry] = []
        func step(_ call: @escaping @Sendable () async throws -> StageVerdict) async -> StageVerdict {
            let (verdict, micros, failure) = await Self.invoke(entry, call)
            trace.append(TraceEntry(stage: entry.name, phase: phase, outcome: failure ?? verdict.description, micros: micros))
            return verdict
        }
        let stage = entry.stage
        var verdict = await step { try await stage.headers(headers, session: session, transaction: transaction) }
        guard case .continue = verdict else { return PhaseResult(verdict: verdict, trace: trace) }
        do {
            for try await chunk in body where !chunk.isEmpty {
                verdict = await step { try await stage.bodyChunk(chunk, session: session, transaction: transaction) }
                guard case .continue = verdict else { break }
            }
        } catch {
            let why = "cannot read the message body: \(error)"
            let failed = entry.onError.verdict(stage: entry.name, why: why)
            trace.append(TraceEntry(stage: entry.name, phase: phase, outcome: "\(why) -> \(failed)", micros: 0))
            return PhaseResult(verdict: failed, trace: trace)
        }
        return PhaseResult(verdict: verdict, trace: trace)
    }

    /// After the 250; errors and timeouts are only traced.
    public func queued(queueID: String, session: SessionInfo, transaction: TransactionInfo) async {
        for entry in hooked[.queued] ?? [] {
            _ = await Self.invoke(entry) { await entry.stage.queued(queueID: queueID, session: session, transaction: transaction); return StageVerdict.continue }
        }
    }

    public func disconnect(session: SessionInfo) async {
        for entry in hooked[.disconnect] ?? [] {
            _ = await Self.invoke(entry) { await entry.stage.disconnect(session: session); return StageVerdict.continue }
        }
    }
}

/// A phase result type that can stand for a failed call.
protocol VerdictCarrying: Sendable {
    init(failureVerdict: StageVerdict)
}

extension StageVerdict: VerdictCarrying {
    init(failureVerdict: StageVerdict) { self = failureVerdict }
}

extension StageDecision: VerdictCarrying {
    init(failureVerdict: StageVerdict) { self.init(failureVerdict) }
}
