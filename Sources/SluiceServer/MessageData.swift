import SluicePipeline
import SluiceStageAPI

/// The message data of a transaction as the session follows it: how much has come, what the
/// data-phase stages have been given and what they said. The bytes themselves go to the queue's
/// draft; only the start of the message is kept here, until its header section is complete.
public struct MessageData: Sendable, Equatable {
    /// Octets received so far (CRLF line ends, unstuffed).
    public internal(set) var size = 0
    /// The data-phase stages' verdict so far.
    public internal(set) var verdict: StageVerdict = .continue
    /// The start of the message while data-phase stages wait for its header section.
    var headerBuffer: [UInt8] = []
    /// Data-phase stages have had the header section.
    public internal(set) var headersGiven = false

    public init() {}
}

/// What the handler does with a chunk of message data.
public struct ChunkPlan: Sendable, Equatable {
    /// Append it to the draft (no: the message is over the size limit, or the BDAT chunk is refused).
    public var store: Bool
    /// What data-phase stages get once it is stored, if anything; call `dataStagesAnswered` after.
    public var feed: DataFeed?

    public init(store: Bool, feed: DataFeed?) {
        self.store = store
        self.feed = feed
    }
}

/// What data-phase stages are given.
public enum DataFeed: Sendable, Equatable {
    /// The header section, then what followed it so far as the first body chunk (none if empty).
    case headers([HeaderField], rest: [UInt8])
    /// The chunk itself, as body.
    case body
}

extension MessageData {
    /// Counts a chunk and says what becomes of it: past `limit` nothing is stored or fed; while
    /// `feeding`, the header section goes to data-phase stages once complete, then each chunk.
    /// Mutated in place, so the header buffer is never copied.
    mutating func receive<Bytes: Collection<UInt8>>(_ bytes: Bytes, limit: Int, feeding: Bool) -> ChunkPlan {
        size += bytes.count
        guard size <= limit else { return ChunkPlan(store: false, feed: nil) }
        guard feeding, case .continue = verdict else { return ChunkPlan(store: true, feed: nil) }
        if headersGiven { return ChunkPlan(store: true, feed: .body) }
        headerBuffer += bytes
        let section = HeaderSection.parse(headerBuffer)
        guard section.complete || headerBuffer.count > SessionStateMachine.headerSectionLimit else { return ChunkPlan(store: true, feed: nil) }
        return ChunkPlan(store: true, feed: giveHeaders(section))
    }

    /// The header section still owed to data-phase stages at the end of the data, if any.
    mutating func end(limit: Int, feeding: Bool) -> DataFeed? {
        guard feeding, !headersGiven, size <= limit, case .continue = verdict else { return nil }
        return giveHeaders(HeaderSection.parse(headerBuffer, atEnd: true))
    }

    private mutating func giveHeaders(_ section: HeaderSection) -> DataFeed {
        headersGiven = true
        let rest = Array(headerBuffer[min(section.bodyOffset, headerBuffer.count)...])
        headerBuffer = []
        return .headers(section.fields, rest: rest)
    }
}

extension SessionStateMachine {
    /// A chunk of message data arrived (DATA, or a BDAT chunk).
    public mutating func dataChunk<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> ChunkPlan {
        if case .bdatChunk(_, _, let refusal) = phase, refusal != nil { return ChunkPlan(store: false, feed: nil) }
        let (limit, feeding) = (configuration.maxMessageBytes, configuration.hookedPhases.contains(.data))
        return transaction?.data?.receive(bytes, limit: limit, feeding: feeding) ?? ChunkPlan(store: false, feed: nil)
    }

    /// The most of a message start kept for data-phase stages' header section; a longer header
    /// section is given as far as it goes.
    public static var headerSectionLimit: Int { 256 * 1024 }

    /// Data-phase stages answered a feed.
    public mutating func dataStagesAnswered(_ verdict: StageVerdict, trace: [TraceEntry]) {
        transaction?.trace.appendFoldingData(trace)
        transaction?.data?.verdict = verdict
    }

    /// The disk failed under the draft: the message can only be refused (451 at its end).
    public mutating func draftFailed() {
        transaction?.data?.verdict = .tempfail(451, "4.3.0", "Error: queue file write error")
    }

    /// The last byte of the message has arrived. A header section that never met its empty line
    /// (a message with no body, which RFC 5322 allows) is given to data-phase stages now, so
    /// they judge it like any other message; then call `dataStagesAnswered` before finishing.
    public mutating func dataEnded() -> DataFeed? {
        if case .bdatChunk(_, _, let refusal) = phase, refusal != nil { return nil }
        let (limit, feeding) = (configuration.maxMessageBytes, configuration.hookedPhases.contains(.data))
        return transaction?.data?.end(limit: limit, feeding: feeding)
    }

    /// The message so far, with the framer's findings, as `dataFinished` judges it.
    public func dataOutcome(flags: MessageDataFlags) -> DataOutcome {
        DataOutcome(size: transaction?.data?.size ?? 0, flags: flags, stageVerdict: transaction?.data?.verdict ?? .continue)
    }

    /// A BDAT chunk has been read; the message so far is judged (with the framer's findings) when
    /// it was the LAST chunk.
    public mutating func bdatChunkRead(flags: MessageDataFlags) -> Action {
        guard case .bdatChunk(let size, _, _) = phase else { return .none }
        let outcome = dataOutcome(flags: flags)
        return bdatChunkRead(chunkSize: size, outcome: outcome)
    }

    /// The data of a DATA or BDAT-LAST message is complete; judged with the framer's findings.
    public mutating func dataFinished(flags: MessageDataFlags) -> Action {
        let outcome = dataOutcome(flags: flags)
        return dataFinished(outcome)
    }

    /// The BDAT chunk being read is the last one of a message that is stored.
    public var readingLastStoredChunk: Bool {
        if case .bdatChunk(_, let last, let refusal) = phase { return last && refusal == nil }
        return false
    }

    /// Adds end of message's (and the intake's) trace lines to the transaction's.
    public mutating func recordTrace(_ entries: [TraceEntry]) {
        transaction?.trace += entries
    }
}
