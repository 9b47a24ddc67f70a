import Foundation
import Logging
import NIOCore
import NIOPosix
import SMTPCore
import SluicePipeline
import SluiceSpool
import SluiceStageAPI
import Testing

/// A spool in a fresh temporary directory, with its own thread pool and an event loop.
final class TestSpool {
    let root: String
    let pool: NIOThreadPool
    let spool: Spool
    let loop: any EventLoop

    init(minFreeBytes: UInt64 = 0) throws {
        root = NSTemporaryDirectory() + "sluice-spool-tests-" + UUID().uuidString
        pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        spool = Spool(layout: SpoolLayout(root: root), threadPool: pool, minFreeBytes: minFreeBytes)
        try spool.layout.create()
        loop = MultiThreadedEventLoopGroup.singleton.next()
    }

    func shutdown() async {
        try? await pool.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: root)
    }

    var layout: SpoolLayout { spool.layout }

    func files(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
    }

    func bytes(_ path: String) -> [UInt8] {
        FileManager.default.contents(atPath: path).map { Array($0) } ?? []
    }

    func write(_ path: String, _ bytes: [UInt8]) {
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)), "cannot write \(path)")
    }
}

func withSpool(minFreeBytes: UInt64 = 0, _ body: (TestSpool) async throws -> Void) async throws {
    let s = try TestSpool(minFreeBytes: minFreeBytes)
    do {
        try await body(s)
    } catch {
        await s.shutdown()
        throw error
    }
    await s.shutdown()
}

let sender = Mailbox(localPart: "sender", domain: "client.test")
let recipient = Mailbox(localPart: "user", domain: "example.test")

func envelope(_ id: String, recipients: [Mailbox] = [recipient], sender: ReversePath = .mailbox(sender)) -> SpoolEnvelope {
    SpoolEnvelope(
        id: id, sender: sender, senderParameters: [ESMTPParameter(keyword: "BODY", value: "8BITMIME")],
        recipients: recipients.map { .init(address: $0, parameters: [], destination: "maildir:/srv/mail") },
        client: .init(address: "192.0.2.10", port: 40000, helo: "client.test"), protocolName: "ESMTP",
        receivedAt: 1_795_941_053.5, size: 0, body: .eightBitMIME, smtputf8: false, quarantine: nil,
        trace: [TraceEntry(stage: "access", phase: "connect", outcome: "continue", micros: 5)]
    )
}

let silentLogger = Logger(label: "sluice-tests") { _ in SwiftLogNoOpLogHandler() }

/// Waits (up to `timeout`) for a condition that background work makes true.
func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// A `SpoolDraft` used as a session uses it: made and driven on its event loop, to which a draft
/// is confined. Each call hops onto the loop and waits for the result.
struct LoopDraft: Sendable {
    let bound: NIOLoopBound<SpoolDraft>
    let loop: any EventLoop

    init(_ s: TestSpool, id: String = QueueID.make()) async throws {
        let (spool, loop) = (s.spool, s.loop)
        bound = try await loop.submit { NIOLoopBound(spool.makeDraft(id: id, eventLoop: loop), eventLoop: loop) }.get()
        self.loop = loop
    }

    var id: String { get async throws { try await loop.submit { [bound] in bound.value.id }.get() } }
    var size: Int { get async throws { try await loop.submit { [bound] in bound.value.size }.get() } }
    var headerPrefix: [UInt8] { get async throws { try await loop.submit { [bound] in bound.value.headerPrefix }.get() } }
    var shouldFlush: Bool { get async throws { try await loop.submit { [bound] in bound.value.shouldFlush }.get() } }

    func append(_ bytes: [UInt8]) async throws { try await loop.submit { [bound] in bound.value.append(bytes) }.get() }
    func flush() async throws { try await loop.flatSubmit { [bound] in bound.value.flush() }.get() }
    func commit(_ commit: SpoolDraft.Commit) async throws { try await loop.flatSubmit { [bound] in bound.value.commit(commit) }.get() }
    func discard() async throws { try await loop.submit { [bound] in bound.value.discard() }.get() }
    func body(from offset: Int) async throws -> MessageBody { try await loop.submit { [bound] in bound.value.body(from: offset) }.get() }
}

/// Destinations written as a route's `to` text, as the config gives them.
extension Destination: ExpressibleByStringLiteral {
    public init(stringLiteral text: String) {
        guard let d = Destination(parsing: text, baseDirectory: "/") else { fatalError("not a destination: \(text)") }
        self = d
    }
}
