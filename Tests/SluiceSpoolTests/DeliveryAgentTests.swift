import Foundation
import Logging
import NIOCore
import NIOPosix
import SMTPCore
@testable import SluiceDelivery
import SluiceSpool
import SluiceStageAPI
import Synchronization
import Testing

/// A queue held in memory: a second `QueueStore`, written in a few lines against the protocol
/// alone, that delivery works with unchanged. Content goes out in small chunks, not as a file.
final class MemoryQueueStore: QueueStore {
    struct Stored {
        var envelope: SpoolEnvelope
        var content: [UInt8]
        var resolved: [Int: RecipientResolution] = [:]
        var warned = false
        var attempts = 0
    }

    struct State {
        var messages: [String: Stored] = [:]
        var completed: [String] = []
        var retried: [(id: String, delay: Duration, domains: Set<String>)] = []
    }

    let state = Mutex(State())
    /// A new stream for each delivery run (a finished one stays finished).
    private let stream = Mutex(AsyncStream<String>.makeStream())

    var due: AsyncStream<String> { stream.withLock { $0.stream } }
    private var input: AsyncStream<String>.Continuation { stream.withLock { $0.continuation } }

    /// Starts a new `due` sequence with `ids` in it.
    func reopen(due ids: [String]) {
        stream.withLock { $0 = AsyncStream<String>.makeStream() }
        for id in ids { announce(id) }
    }

    func add(_ envelope: SpoolEnvelope, content: [UInt8], resolved: [Int: RecipientResolution] = [:]) {
        state.withLock { $0.messages[envelope.id] = Stored(envelope: envelope, content: content, resolved: resolved) }
        announce(envelope.id)
    }

    var snapshot: State { state.withLock { $0 } }

    func hasFreeSpace() -> Bool { true }
    var isAvailable: Bool { true }
    func makeDraft(id: String, eventLoop: any EventLoop) -> any QueueDraft { fatalError("delivery tests do not receive") }
    func announce(_ id: String) { input.yield(id) }
    func recover(logger: Logger) async throws -> Int { 0 }

    func claim(_ id: String) async throws -> QueuedMessage? {
        state.withLock { s in
            s.messages[id].map {
                QueuedMessage(envelope: $0.envelope, contentLength: $0.content.count, resolved: $0.resolved, warned: $0.warned, attempts: $0.attempts)
            }
        }
    }

    func content(of message: QueuedMessage) -> MessageContent {
        let bytes = state.withLock { $0.messages[message.id]?.content ?? [] }
        // 7-octet chunks, so line ends fall across chunk boundaries.
        let chunks = Mutex(stride(from: 0, to: bytes.count, by: 7).map { Array(bytes[$0..<min($0 + 7, bytes.count)]) })
        let body = MessageBody {
            let mine = Mutex(chunks.withLock { $0 })
            return { mine.withLock { $0.isEmpty ? nil : $0.removeFirst() } }
        }
        return .chunks(body, length: bytes.count)
    }

    func retry(_ message: QueuedMessage, resolved: [(Int, RecipientResolution)], warned: Bool, after delay: Duration, domains: Set<String>) async throws {
        state.withLock { s in
            for (i, r) in resolved { s.messages[message.id]?.resolved[i] = r }
            if warned { s.messages[message.id]?.warned = true }
            s.messages[message.id]?.attempts = message.attempts + 1
            s.retried.append((message.id, delay, domains))
        }
    }

    func complete(_ message: QueuedMessage) async throws {
        state.withLock { s in
            s.messages.removeValue(forKey: message.id)
            s.completed.append(message.id)
        }
    }

    func enqueueGenerated(content: [UInt8], envelope: SpoolEnvelope) async throws {
        add(envelope, content: content)
    }

    func flush(_ id: String?) async throws -> Int { 0 }
    func flush(domain: String) async throws -> Int { 0 }
    func finish() { input.finish() }
}

@Suite("DeliveryAgent")
struct DeliveryAgentTests {
    /// Runs a delivery agent on `store` (maildir routes only: no sockets) until `done` holds.
    static func deliver(
        _ store: MemoryQueueStore, policy: QueuePolicy = QueuePolicy(), route: Destination? = nil,
        until done: @escaping (MemoryQueueStore.State) -> Bool
    ) async throws -> Bool {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        let relay = try RelayClient(
            hostname: "mx.example.test", group: MultiThreadedEventLoopGroup.singleton, threadPool: pool,
            timeouts: RelayTimeouts(), connectionsPerDestination: 2, tlsSettings: [:], defaultTLSSettings: .opportunistic, logger: silentLogger
        )
        let agent = DeliveryAgent(
            store: store, threadPool: pool, hostname: "mx.example.test", relay: relay, policy: policy, concurrency: 4,
            route: { _ in route }, logger: silentLogger
        )
        let running = Task { await agent.run() }
        let ok = await eventually { done(store.snapshot) }
        store.finish()
        await running.value
        try await pool.shutdownGracefully()
        return ok
    }

    static func message(_ id: String, to recipients: [(Mailbox, Destination)], receivedAt: Double = Date().timeIntervalSince1970) -> SpoolEnvelope {
        var e = envelope(id)
        e.recipients = recipients.map { .init(address: $0.0, parameters: [], destination: $0.1) }
        e.receivedAt = receivedAt
        return e
    }

    static let content = Array("Subject: from memory\r\n\r\nline one\r\nline two\r\n".utf8)
    static let delivered = "Return-Path: <sender@client.test>\nDelivered-To: %@\nSubject: from memory\n\nline one\nline two\n"

    @Test func deliversEveryRecipientAndCompletes() async throws {
        try await withSpool { s in
            let store = MemoryQueueStore()
            let mail = Destination.maildir(root: s.root + "/mail")
            let other = Mailbox(localPart: "other", domain: "example.test")
            store.add(Self.message("M1", to: [(recipient, mail), (other, mail)]), content: Self.content)
            let done0 = try await Self.deliver(store) { $0.completed == ["M1"] }
            #expect(done0)
            for rcpt in [recipient, other] {
                let folder = MaildirDelivery.folder(root: s.root + "/mail", recipient: rcpt) + "/new"
                let files = s.files(folder)
                #expect(files.count == 1)
                #expect(String(decoding: s.bytes(folder + "/" + (files.first ?? "")), as: UTF8.self)
                    == Self.delivered.replacingOccurrences(of: "%@", with: "\(rcpt)"))
            }
            #expect(store.snapshot.retried.isEmpty)
        }
    }

    @Test func recipientsResolvedEarlierAreNotRepeated() async throws {
        try await withSpool { s in
            let store = MemoryQueueStore()
            let mail = Destination.maildir(root: s.root + "/mail")
            let other = Mailbox(localPart: "other", domain: "example.test")
            store.add(Self.message("M2", to: [(recipient, mail), (other, mail)]), content: Self.content, resolved: [0: .delivered])
            let done1 = try await Self.deliver(store) { $0.completed == ["M2"] }
            #expect(done1)
            #expect(s.files(MaildirDelivery.folder(root: s.root + "/mail", recipient: recipient) + "/new").isEmpty)
            #expect(s.files(MaildirDelivery.folder(root: s.root + "/mail", recipient: other) + "/new").count == 1)
        }
    }

    /// A maildir that cannot be written defers; what was delivered is recorded and the retry
    /// backs off from `min_backoff_s`, doubling with each attempt.
    @Test func partialFailureRecordsAndRetries() async throws {
        try await withSpool { s in
            let store = MemoryQueueStore()
            s.write(s.root + "/not-a-folder", [])
            let broken = Destination.maildir(root: s.root + "/not-a-folder")
            let other = Mailbox(localPart: "other", domain: "broken.test")
            store.add(Self.message("M3", to: [(recipient, .maildir(root: s.root + "/mail")), (other, broken)]), content: Self.content)
            var policy = QueuePolicy()
            policy.minBackoff = .seconds(300)
            let done2 = try await Self.deliver(store, policy: policy) { $0.retried.count == 1 }
            #expect(done2)
            let state = store.snapshot
            #expect(state.completed.isEmpty)
            #expect(state.retried.first?.delay == .seconds(300))
            #expect(state.retried.first?.domains == ["broken.test"])
            #expect(state.messages["M3"]?.resolved == [0: .delivered])
            #expect(state.messages["M3"]?.attempts == 1)

            // The second attempt only tries the deferred recipient, and waits twice as long.
            store.reopen(due: ["M3"])
            let done3 = try await Self.deliver(store, policy: policy) { $0.retried.count == 2 }
            #expect(done3)
            #expect(store.snapshot.retried.last?.delay == .seconds(600))
            #expect(s.files(MaildirDelivery.folder(root: s.root + "/mail", recipient: recipient) + "/new").count == 1)
        }
    }

    /// Past `max_lifetime_s` a deferred recipient fails with 4.4.7 and the sender gets a bounce,
    /// queued through the store and delivered like any message.
    @Test func expiredMessageBouncesThroughTheStore() async throws {
        try await withSpool { s in
            let store = MemoryQueueStore()
            s.write(s.root + "/not-a-folder", [])
            let old = Date().timeIntervalSince1970 - 10 * 86400
            store.add(Self.message("M4", to: [(recipient, .maildir(root: s.root + "/not-a-folder"))], receivedAt: old), content: Self.content)
            let senderMail = Destination.maildir(root: s.root + "/senders")
            let done4 = try await Self.deliver(store, route: senderMail) { $0.completed.count == 2 }
            #expect(done4)
            #expect(store.snapshot.completed.contains("M4"))
            let folder = MaildirDelivery.folder(root: s.root + "/senders", recipient: sender) + "/new"
            let files = s.files(folder)
            #expect(files.count == 1)
            let bounce = String(decoding: s.bytes(folder + "/" + (files.first ?? "")), as: UTF8.self)
            #expect(bounce.hasPrefix("Return-Path: <>\n"))
            #expect(bounce.contains("Action: failed\nStatus: 4.4.7\n"))
            #expect(bounce.contains("Subject: from memory\n"))
        }
    }

    /// `delay_warning_s`: one notice to the sender, recorded so the next attempt sends none.
    @Test func delayWarningGoesOutOnce() async throws {
        try await withSpool { s in
            let store = MemoryQueueStore()
            s.write(s.root + "/not-a-folder", [])
            let hourAgo = Date().timeIntervalSince1970 - 3600
            store.add(Self.message("M5", to: [(recipient, .maildir(root: s.root + "/not-a-folder"))], receivedAt: hourAgo), content: Self.content)
            var policy = QueuePolicy()
            policy.delayWarning = 60
            let senderMail = Destination.maildir(root: s.root + "/senders")
            let done5 = try await Self.deliver(store, policy: policy, route: senderMail) { $0.retried.count == 1 && $0.completed.count == 1 }
            #expect(done5)
            #expect(store.snapshot.messages["M5"]?.warned == true)
            store.reopen(due: ["M5"])
            let done6 = try await Self.deliver(store, policy: policy, route: senderMail) { $0.retried.count == 2 }
            #expect(done6)
            let folder = MaildirDelivery.folder(root: s.root + "/senders", recipient: sender) + "/new"
            #expect(s.files(folder).count == 1)
            #expect(String(decoding: s.bytes(folder + "/" + (s.files(folder).first ?? "")), as: UTF8.self).contains("Action: delayed\n"))
        }
    }
}
