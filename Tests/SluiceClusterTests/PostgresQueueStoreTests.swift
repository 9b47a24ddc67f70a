import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import SMTPCore
import SluiceMessage
import SluiceSpool
import Testing
@testable import SluiceCluster

/// The PostgreSQL queue against a real server: `make test` runs the unit tests under
/// `scripts/with-postgres.py`, which starts one and sets SLUICE_TEST_POSTGRES to its URL.
let testPostgresURL = ProcessInfo.processInfo.environment["SLUICE_TEST_POSTGRES"]

@Suite("PostgresQueueStore", .serialized, .enabled(if: testPostgresURL != nil, "SLUICE_TEST_POSTGRES is not set"))
struct PostgresQueueStoreTests {
    static let url = testPostgresURL
    static let logger = Logger(label: "sluice-cluster-tests") { _ in SwiftLogNoOpLogHandler() }

    static func settings(node: String, lease: Int = 60) throws -> ClusterSettings {
        let p = try ClusterSettings.parse(url: try #require(url))
        return ClusterSettings(host: p.host, port: p.port, username: p.username, password: p.password, database: p.database, node: node, leaseSeconds: lease)
    }

    /// Runs `body` with a fresh schema and one store per node name, sharing one client.
    func withStores(_ nodes: [String], lease: Int = 60, _ body: ([PostgresQueueStore], PostgresClient) async throws -> Void) async throws {
        let settings = try Self.settings(node: nodes[0], lease: lease)
        let root = NSTemporaryDirectory() + "sluice-cluster-tests-" + UUID().uuidString
        let scratch = Spool(layout: SpoolLayout(root: root), threadPool: .singleton, minFreeBytes: 0)
        try scratch.layout.create()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await settings.withClient(logger: Self.logger) { client in
            try await client.query("DROP TABLE IF EXISTS sluice_outcomes, sluice_chunks, sluice_messages, sluice_nodes, sluice_state, sluice_schema")
            try await settings.check(migrate: true, logger: Self.logger)
            let stores = nodes.map {
                PostgresQueueStore(client: client, node: $0, leaseSeconds: lease, scratch: scratch, logger: Self.logger)
            }
            for s in stores { _ = try await s.recover(logger: Self.logger) }
            try await body(stores, client)
        }
    }

    static func envelope(_ id: String, domains: [String] = ["example.test"]) -> SpoolEnvelope {
        SpoolEnvelope(
            id: id, sender: .mailbox(Mailbox(localPart: "s", domain: "client.test")), senderParameters: [],
            recipients: domains.enumerated().map {
                .init(address: Mailbox(localPart: "r\($0.offset)", domain: $0.element), parameters: [],
                      destination: Destination(parsing: "smtp://127.0.0.1:25", baseDirectory: "/")!)
            },
            client: .init(address: "192.0.2.1", port: 1, helo: "client.test"), protocolName: "ESMTP",
            receivedAt: 1_795_941_053, size: 0, body: nil, smtputf8: false, quarantine: nil, trace: []
        )
    }

    func count(_ client: PostgresClient, _ table: String) async throws -> Int {
        var n = 0
        for try await c in try await client.query(PostgresQuery(unsafeSQL: "SELECT count(*)::bigint FROM \(table)")).decode(Int.self) { n = c }
        return n
    }

    @Test func aDraftIsCommittedInChunksClaimedReadAndCompleted() async throws {
        try await withStores(["mx1"]) { stores, client in
            let store = stores[0]
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let content = Array(repeating: UInt8(ascii: "x"), count: PostgresQueueStore.chunkSize * 2 + 10)
            try await loop.flatSubmit {
                // A draft is confined to its session's event loop.
                let draft = store.makeDraft(id: "M1", eventLoop: loop)
                draft.append(Array("Subject: hi\r\n\r\n".utf8) + content)
                return draft.commit(DraftCommit(envelope: Self.envelope("M1"), headers: nil, bodyOffset: 15, replacementBody: nil, quarantine: false))
            }.get()
            #expect(try await count(client, "sluice_chunks") == 3)
            let ids = try await store.claimBatch(10)
            #expect(ids == ["M1"])
            let message = try #require(try await store.claim("M1"))
            #expect(message.contentLength == content.count + 15)
            let read = try await store.content(of: message).chunks(threadPool: .singleton).collect()
            #expect(read == Array("Subject: hi\r\n\r\n".utf8) + content)
            try await store.complete(message)
            #expect(try await count(client, "sluice_messages") == 0)
            #expect(try await count(client, "sluice_chunks") == 0)
        }
    }

    /// Messages stored at once go in batches; each keeps its own content, whatever its size
    /// (empty, read with the claim, at the edges of the inline limit and of a chunk).
    @Test func messagesStoredTogetherKeepTheirOwnContent() async throws {
        try await withStores(["mx1"]) { stores, client in
            let store = stores[0]
            let (inline, chunk) = (PostgresQueueStore.inlineLimit, PostgresQueueStore.chunkSize)
            let sizes = [0, 1, 77, inline - 1, inline, inline + 1, chunk, chunk + 1] + Array(repeating: 300, count: 32)
            func bytes(_ i: Int) -> [UInt8] { (0..<sizes[i]).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) } }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in sizes.indices {
                    group.addTask { try await store.enqueueGenerated(content: bytes(i), envelope: Self.envelope("B\(i)")) }
                }
                try await group.waitForAll()
            }
            #expect(try await count(client, "sluice_messages") == sizes.count)
            let ids = try await store.claimBatch(100)
            #expect(Set(ids) == Set(sizes.indices.map { "B\($0)" }))
            for i in sizes.indices {
                let message = try #require(try await store.claim("B\(i)"))
                #expect(message.contentLength == sizes[i])
                let content = store.content(of: message)
                #expect(try await content.chunks(threadPool: .singleton).collect() == bytes(i), "message \(i) of \(sizes[i]) octets")
                #expect(try await content.chunks(threadPool: .singleton).collect() == bytes(i), "read twice")
                try await store.complete(message)
            }
            #expect(try await count(client, "sluice_messages") == 0)
            #expect(try await count(client, "sluice_chunks") == 0)
        }
    }

    @Test func twoNodesNeverClaimTheSameMessage() async throws {
        try await withStores(["mx1", "mx2"]) { stores, _ in
            for i in 0..<60 { try await stores[0].enqueueGenerated(content: Array("m\(i)\r\n".utf8), envelope: Self.envelope("C\(i)")) }
            async let a = stores[0].claimBatch(60)
            async let b = stores[1].claimBatch(60)
            let (ca, cb) = try await (a, b)
            #expect(Set(ca).isDisjoint(with: cb))
            #expect(Set(ca + cb).count == 60)
            #expect(try await stores[1].claimBatch(60).isEmpty, "nothing is claimed twice while its lease lasts")
        }
    }

    @Test func aLeaseNobodyRenewsPassesToAnotherNode() async throws {
        try await withStores(["mx1", "mx2"], lease: 1) { stores, _ in
            try await stores[0].enqueueGenerated(content: Array("x\r\n".utf8), envelope: Self.envelope("L1"))
            #expect(try await stores[0].claimBatch(10) == ["L1"])
            #expect(try await stores[1].claimBatch(10).isEmpty)
            try await Task.sleep(for: .milliseconds(1300))
            #expect(try await stores[1].claimBatch(10) == ["L1"])
            // The first node's claim is gone: it can no longer end the message.
            #expect(try await stores[0].claim("L1") == nil)
            #expect(try await stores[1].claim("L1") != nil)
        }
    }

    @Test func outcomesAndTheWarningSurviveARetry() async throws {
        try await withStores(["mx1"]) { stores, _ in
            let store = stores[0]
            try await store.enqueueGenerated(content: Array("x\r\n".utf8), envelope: Self.envelope("R1", domains: ["a.test", "b.test", "c.test"]))
            _ = try await store.claimBatch(10)
            let first = try #require(try await store.claim("R1"))
            let refusal = SMTPReply(550, "5.1.1", "no such user")
            try await store.retry(first, resolved: [(0, .delivered), (1, .failed(refusal))], warned: true, after: .seconds(3600), domains: ["c.test"])
            #expect(try await store.claimBatch(10).isEmpty, "not due before its retry time")
            #expect(try await store.flush(domain: "b.test") == 0)
            #expect(try await store.flush(domain: "C.TEST") == 1)
            #expect(try await store.claimBatch(10) == ["R1"])
            let again = try #require(try await store.claim("R1"))
            #expect(again.attempts == 1)
            #expect(again.warned)
            #expect(again.resolved == [0: .delivered, 1: .failed(refusal)])
        }
    }

    @Test func holdReleaseAndDeleteFromTheInspection() async throws {
        try await withStores(["mx1"]) { stores, _ in
            let store = stores[0]
            try await store.enqueueGenerated(content: Array("x\r\n".utf8), envelope: Self.envelope("H1"))
            try await store.hold("H1")
            #expect(try await store.show("H1")?.state == .held)
            #expect(try await store.claimBatch(10).isEmpty, "a held message is not delivered")
            try await store.release("H1")
            #expect(try await store.list().map(\.state) == [.queued])
            #expect(try await store.claimBatch(10) == ["H1"])
            #expect(try await store.list().first?.claimedBy == "mx1")
            try await store.delete("H1")
            await #expect(throws: QueueControl.Failure.self) { try await store.delete("H1") }
        }
    }
}
