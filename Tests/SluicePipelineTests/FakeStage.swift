import SMTPCore
import SluicePipeline
import SluiceStageAPI
import Synchronization

/// What stages did, in order: `name@phase`.
final class CallLog: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ s: String) { entries.withLock { $0.append(s) } }
    var all: [String] { entries.withLock { $0 } }
}

/// A value a stage saw, kept for the test to look at.
final class Seen<T: Sendable>: Sendable {
    private let value = Mutex<T?>(nil)
    func set(_ v: T) { value.withLock { $0 = v } }
    var get: T? { value.withLock { $0 } }
}

/// Holds waiters until opened; waiting ignores cancellation.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    var isOpen: Bool { state.withLock { $0.open } }

    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { s -> Bool in
                if s.open { return true }
                s.waiters.append(c)
                return false
            }
            if resumeNow { c.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume() }
    }
}

struct FakeError: Error, CustomStringConvertible {
    var description: String { "boom" }
}

/// A stage whose every phase answers `verdict` (after `behavior`), and whose end of message
/// returns `edits`; `inspect` sees the message at end of message.
struct FakeStage: Stage {
    enum Behavior: Sendable {
        case answer
        case fail
        /// Sleeps, and stops early when cancelled.
        case sleep(Duration)
        /// Waits, deaf to cancellation, until the gate opens.
        case waitIgnoringCancellation(Gate)
    }

    var name: String
    var phases: Set<StagePhase>
    var verdict: StageVerdict = .continue
    var behavior: Behavior = .answer
    var capabilities: StageCapabilities = []
    var ehloKeywords: [String] = []
    var messageSizeLimit: Int?
    var edits: [MessageEdit] = []
    var log: CallLog
    var inspect: (@Sendable (MessageView, TransactionInfo) async throws -> Void)?

    init(
        _ name: String, _ phases: Set<StagePhase>, verdict: StageVerdict = .continue, behavior: Behavior = .answer,
        capabilities: StageCapabilities = [], edits: [MessageEdit] = [], log: CallLog = CallLog(),
        ehloKeywords: [String] = [], messageSizeLimit: Int? = nil,
        inspect: (@Sendable (MessageView, TransactionInfo) async throws -> Void)? = nil
    ) {
        self.name = name
        self.phases = phases
        self.verdict = verdict
        self.behavior = behavior
        self.capabilities = capabilities
        self.edits = edits
        self.log = log
        self.ehloKeywords = ehloKeywords
        self.messageSizeLimit = messageSizeLimit
        self.inspect = inspect
    }

    private func act(_ phase: String) async throws -> StageVerdict {
        log.add("\(name)@\(phase)")
        switch behavior {
        case .answer: break
        case .fail: throw FakeError()
        case .sleep(let d): try await Task.sleep(for: d)
        case .waitIgnoringCancellation(let gate): await gate.wait()
        }
        return verdict
    }

    func connect(session: SessionInfo) async throws -> StageVerdict { try await act("connect") }
    func helo(session: SessionInfo) async throws -> StageVerdict { try await act("helo") }
    func mailFrom(session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict { try await act("mail") }
    func rcptTo(_ recipient: Recipient, session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        try await act("rcpt \(recipient.mailbox)")
    }
    func headers(_ headers: [HeaderField], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        try await act("headers \(headers.map(\.name).joined(separator: ","))")
    }
    func bodyChunk(_ chunk: [UInt8], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
        try await act("body \(chunk.count)")
    }
    func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
        let verdict = try await act("eom")
        try await inspect?(message, transaction)
        return StageDecision(verdict, edits: edits)
    }
    func queued(queueID: String, session: SessionInfo, transaction: TransactionInfo) async { log.add("\(name)@queued \(queueID)") }
    func disconnect(session: SessionInfo) async { log.add("\(name)@disconnect") }
}

func entry(_ stage: FakeStage, timeout: Duration = .seconds(10), onError: FailurePolicy = .tempfail) -> StageEntry {
    StageEntry(name: stage.name, kind: "fake", stage: stage, timeout: timeout, onError: onError)
}

let testSession = SessionInfo(
    id: "S1", clientAddress: "192.0.2.10", clientPort: 40000, serverAddress: "198.51.100.1", serverPort: 25,
    serverHostname: "mx.example.test", heloName: "client.test", esmtp: true
)

let firstRecipient = Recipient(Mailbox(localPart: "user", domain: "example.test"))

let testTransaction = TransactionInfo(
    queueID: "QID1", sender: .mailbox(Mailbox(localPart: "sender", domain: "client.test")), recipients: [firstRecipient]
)

/// `reject 550 5.7.1`, `tempfail 451 4.3.0`, `continue`, ...: the verdict without its text.
func summary(_ v: StageVerdict) -> String {
    func r(_ reply: SMTPReply) -> String { "\(reply.code) \(reply.enhancedCode?.description ?? "-")" }
    switch v {
    case .continue: return "continue"
    case .accept: return "accept"
    case .reject(let reply): return "reject \(r(reply))"
    case .tempfail(let reply): return "tempfail \(r(reply))"
    case .discard: return "discard"
    case .quarantine(let why): return "quarantine \(why)"
    case .disconnect(let reply): return "disconnect \(r(reply))"
    }
}
