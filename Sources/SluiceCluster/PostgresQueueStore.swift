import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import SMTPCore
import SluiceMessage
import SluiceSpool
import Synchronization

/// The queue in PostgreSQL, shared by every node of a cluster (`[cluster]`). A message is one
/// row of `sluice_messages` (its envelope as JSON, its state, when it is due, who claims it),
/// its content rows of `sluice_chunks` in bounded chunks, and what became of each recipient
/// rows of `sluice_outcomes`.
///
/// Delivery claims due messages in batches (`FOR UPDATE SKIP LOCKED`) with a lease (owner and
/// expiry) that this node renews while it works; a claim nobody renews for `lease_s` passes to
/// another node, so a node that dies delays its mail by at most that long and loses none.
/// A retry writes the recipients' outcomes in the transaction that ends its claim, and a
/// delivered message's row is deleted (in batches under load): delivery is at least once.
/// Messages of one chunk are stored in batches too, and a small message's content is read with
/// its claim, so a message costs PostgreSQL few statements and fewer commits. `NOTIFY sluice_due` wakes idle nodes when work
/// arrives; without it they still look every second.
public final class PostgresQueueStore: QueueStore, QueueInspection {
    /// Where a message is.
    enum State: String {
        case queued, held, quarantined
    }

    public let client: PostgresClient
    public let node: String
    public let due: AsyncStream<String>
    private let input: AsyncStream<String>.Continuation
    /// Drafts stay on this node's disk until their commit.
    private let scratch: Spool
    private let leaseSeconds: Int
    private let logger: Logger
    /// Messages this node claimed and has not ended.
    private let held = Mutex<[String: Claim]>([:])
    /// Received messages of one chunk, stored together (one statement and one commit for all
    /// the messages that arrive while the previous batch is on its way).
    private let inserts: GroupCommit<Insert>
    /// Delivered messages, deleted together.
    private let completions: GroupCommit<String>
    /// `NOTIFY sluice_due` after new work was committed, one at a time however many messages.
    private let notifications: GroupCommit<Void>

    /// What this node knows of a message it claimed.
    struct Claim {
        /// Until when the lease surely holds (measured from before the statement that took or
        /// renewed it was sent).
        var leaseUntil: ContinuousClock.Instant
        /// The row as the claim returned it, until `claim(_:)` takes it.
        var row: ClaimedRow?
        /// The content of a small message, read with the claim.
        var content: [UInt8]?
    }

    /// A message's row as `claimBatch` read it.
    struct ClaimedRow {
        var envelope: ByteBuffer
        var contentLength: Int
        var attempts: Int
        var warned: Bool
        /// Recipients were resolved by earlier attempts (read at `claim(_:)`).
        var hasOutcomes: Bool
    }

    /// A message of at most one chunk, waiting for its batch.
    struct Insert: Sendable {
        var id: String
        var state: State
        var envelope: ByteBuffer
        var length: Int
        var received: Double
        var content: ByteBuffer
    }
    /// Set by `finish()`: no more claims.
    private let finished = Atomic<Bool>(false)
    /// Wakes the claim loop (work was announced, flushed or notified).
    private let wakeUp: AsyncStream<Void>.Continuation
    private let wakeUps: AsyncStream<Void>

    /// Content rows hold at most this many octets.
    static let chunkSize = 256 * 1024
    /// The most messages this node holds claims on at once.
    static let claimLimit = 256
    /// The longest a commit may wait for PostgreSQL (the client then hears 451).
    static let commitDeadline = 20.0
    /// The longest a claim may wait: past it the store counts PostgreSQL as unreachable.
    static let claimDeadline = 3.0
    /// The NOTIFY channel of new due work.
    static let dueChannel = "sluice_due"
    /// Content of at most this many octets is read with the claim (at most `claimLimit` times
    /// this in memory).
    static let inlineLimit = 32 * 1024

    /// - Parameter scratch: the node-local spool where drafts are received (its `tmp/`).
    public init(client: PostgresClient, node: String, leaseSeconds: Int, scratch: Spool, logger: Logger) {
        self.client = client
        self.node = node
        self.leaseSeconds = leaseSeconds
        self.scratch = scratch
        self.logger = logger
        (due, input) = AsyncStream<String>.makeStream()
        (wakeUps, wakeUp) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        // Each batch is bounded by the deadline: its waiters hear the timeout, not nothing.
        inserts = GroupCommit { batch in
            try await withDeadline(Self.commitDeadline) { try await Self.insert(batch, client: client, logger: logger) }
        }
        completions = GroupCommit { ids in
            try await withDeadline(Self.commitDeadline) {
                _ = try await client.query("DELETE FROM sluice_messages WHERE id = ANY(\(ids))", logger: logger)
            }
        }
        notifications = GroupCommit { _ in
            try await withDeadline(Self.commitDeadline) {
                _ = try await client.query("SELECT pg_notify(\(Self.dueChannel), '')", logger: logger)
            }
        }
    }

    // MARK: Receiving

    public func hasFreeSpace() -> Bool { scratch.hasFreeSpace() }

    /// The last statement reached PostgreSQL (false from the start until one has).
    public var isAvailable: Bool { reachable.load(ordering: .relaxed) }
    private let reachable = Atomic<Bool>(false)

    /// Notes whether PostgreSQL answered, logging changes once (not per message).
    private func note(reachable now: Bool, _ error: (any Error)? = nil) {
        let before = reachable.exchange(now, ordering: .relaxed)
        if before && !now {
            logger.error("cluster: PostgreSQL unreachable; MAIL gets 451 until it is back", metadata: ["error": "\(error.map { String(reflecting: $0) } ?? "")"])
        } else if !before && now {
            logger.notice("cluster: PostgreSQL reachable")
        }
    }

    public func makeDraft(id: String, eventLoop: any EventLoop) -> any QueueDraft {
        PostgresDraft(local: scratch.makeDraft(id: id, eventLoop: eventLoop), store: self, eventLoop: eventLoop)
    }

    public func announce(_ id: String) { wakeUp.yield() }

    /// Stores a message durably: its row and its content in chunks, in one transaction (a
    /// message of one chunk in a batch with others received meanwhile), then tells the other
    /// nodes of a queued one.
    func insert(envelope: SpoolEnvelope, content: DraftContent, state: State) async throws {
        let json = ByteBuffer(bytes: try SpoolFileFormat.encodeEnvelope(envelope))
        let (id, length, received) = (envelope.id, envelope.size, envelope.receivedAt)
        defer { if case .file(let path, _) = content { try? FileIO.unlink(path) } }
        do {
            if let single = try Self.singleChunk(of: content) {
                try await inserts.submit(Insert(id: id, state: state, envelope: json, length: length, received: received, content: single))
            } else {
                try await withDeadline(Self.commitDeadline) {
                    try await self.store(id: id, json: json, length: length, received: received, content: content, state: state)
                }
            }
        } catch {
            if case .unreachable = ClusterSettings.classify(error) { note(reachable: false, error) }
            throw error
        }
        if state == .queued {
            wakeUp.yield()
            notifications.post(())
        }
    }

    /// The content when it fits in one chunk (read from its file), nil when it does not.
    private static func singleChunk(of content: DraftContent) throws -> ByteBuffer? {
        switch content {
        case .memory(let buffer):
            return buffer.readableBytes <= chunkSize ? buffer : nil
        case .file(let path, let length):
            guard length <= chunkSize else { return nil }
            let fd = try FileIO.openRead(path)
            defer { close(fd) }
            let bytes = try FileIO.pread(fd, count: length, offset: 0, path: path)
            guard bytes.count == length else { throw SpoolError.corrupt(path, "shorter than \(length) octets") }
            return ByteBuffer(bytes: bytes)
        }
    }

    /// Messages of at most one chunk each, in one statement (one commit).
    private static func insert(_ batch: [Insert], client: PostgresClient, logger: Logger) async throws {
        let ids = batch.map(\.id)
        try await client.query("""
            WITH m AS (
                INSERT INTO sluice_messages (id, state, envelope, content_length, received_at)
                SELECT u.id, u.state, u.envelope, u.length, to_timestamp(u.received)
                FROM unnest(\(ids)::text[], \(batch.map(\.state.rawValue))::text[], \(batch.map(\.envelope))::bytea[],
                            \(batch.map(\.length))::int8[], \(batch.map(\.received))::float8[])
                    AS u(id, state, envelope, length, received)
                RETURNING id)
            INSERT INTO sluice_chunks (message_id, seq, data)
            SELECT c.id, 0, c.data FROM unnest(\(ids)::text[], \(batch.map(\.content))::bytea[]) AS c(id, data)
            JOIN m ON m.id = c.id WHERE length(c.data) > 0
            """, logger: logger)
    }

    /// A message of several chunks, in a transaction of its own.
    private func store(id: String, json: ByteBuffer, length: Int, received: Double, content: DraftContent, state: State) async throws {
        let logger = self.logger
        try await client.withTransaction(logger: logger) { connection in
            try await connection.query("""
                INSERT INTO sluice_messages (id, state, envelope, content_length, received_at)
                VALUES (\(id), \(state.rawValue), \(json), \(length), to_timestamp(\(received)))
                """, logger: logger)
            var seq = 0
            try await Self.forEachChunk(of: content) { chunk in
                try await connection.query(
                    "INSERT INTO sluice_chunks (message_id, seq, data) VALUES (\(id), \(seq), \(chunk))", logger: logger)
                seq += 1
            }
        }
    }

    /// The content in chunks of at most `chunkSize` octets, a file read one chunk at a time.
    private static func forEachChunk(of content: DraftContent, _ body: (ByteBuffer) async throws -> Void) async throws {
        switch content {
        case .memory(var buffer):
            while buffer.readableBytes > 0 {
                guard let chunk = buffer.readSlice(length: min(chunkSize, buffer.readableBytes)) else { break }
                try await body(chunk)
            }
        case .file(let path, let length):
            let fd = try FileIO.openRead(path)
            defer { close(fd) }
            var offset = 0
            while offset < length {
                let bytes = try FileIO.pread(fd, count: min(chunkSize, length - offset), offset: offset, path: path)
                guard !bytes.isEmpty else { throw SpoolError.corrupt(path, "shorter than \(length) octets") }
                try await body(ByteBuffer(bytes: bytes))
                offset += bytes.count
            }
        }
    }

    // MARK: Delivering

    /// Registers this node and takes back the claims an earlier run of it left (its name is its
    /// own: nobody else holds them). Returns how many messages are due now.
    public func recover(logger: Logger) async throws -> Int {
        let (node, log) = (self.node, self.logger)
        try await client.query("""
            INSERT INTO sluice_nodes (name) VALUES (\(node))
            ON CONFLICT (name) DO UPDATE SET started_at = now(), heartbeat_at = now()
            """, logger: log)
        try await client.query(
            "UPDATE sluice_messages SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = \(node)", logger: log)
        var count = 0
        for try await n in try await client.query(
            "SELECT count(*)::bigint FROM sluice_messages WHERE state = 'queued' AND due_at <= now()", logger: log
        ).decode(Int.self) { count = n }
        note(reachable: true)
        wakeUp.yield()
        return count
    }

    /// Claims due work and keeps this node's leases and heartbeat fresh until `finish()`:
    /// run it beside the delivery agent.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.listen() }
            group.addTask { await self.renewLeases() }
            group.addTask { await self.tick() }
            await self.claimLoop()
            group.cancelAll()
        }
    }

    private func claimLoop() async {
        for await _ in wakeUps {
            if finished.load(ordering: .relaxed) { break }
            do {
                while true {
                    let room = Self.claimLimit - held.withLock { $0.count }
                    guard room > 0 else { break }
                    let ids = try await withDeadline(Self.claimDeadline) { try await self.claimBatch(room) }
                    note(reachable: true)
                    if ids.isEmpty { break }
                    for id in ids { input.yield(id) }
                    if ids.count < room { break }
                }
            } catch {
                note(reachable: false, error)
            }
        }
    }

    /// Claims up to `limit` due messages for this node, reading each one's row (and the
    /// content of a small one) in the same statement; returns their ids.
    func claimBatch(_ limit: Int) async throws -> [String] {
        let (node, lease, log) = (self.node, Double(leaseSeconds), self.logger)
        let sent = ContinuousClock.now
        var claims: [(String, Claim)] = []
        for try await (id, envelope, length, attempts, warned, hasOutcomes, content) in try await client.query("""
            UPDATE sluice_messages m SET claimed_by = \(node), lease_until = now() + make_interval(secs => \(lease))
            WHERE m.id IN (
                SELECT id FROM sluice_messages
                WHERE state = 'queued' AND due_at <= now() AND (claimed_by IS NULL OR lease_until < now())
                ORDER BY due_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
            RETURNING m.id, m.envelope, m.content_length, m.attempts, m.warned,
                EXISTS (SELECT 1 FROM sluice_outcomes o WHERE o.message_id = m.id AND o.recipient >= 0),
                (SELECT c.data FROM sluice_chunks c WHERE c.message_id = m.id AND c.seq = 0 AND m.content_length <= \(Self.inlineLimit))
            """, logger: log).decode((String, ByteBuffer, Int, Int, Bool, Bool, ByteBuffer?).self) {
            let row = ClaimedRow(envelope: envelope, contentLength: length, attempts: attempts, warned: warned, hasOutcomes: hasOutcomes)
            let inline = content.map { Array($0.readableBytesView) } ?? (length == 0 ? [] : nil)
            claims.append((id, Claim(leaseUntil: sent + .seconds(leaseSeconds), row: row, content: inline)))
        }
        held.withLock { held in
            for (id, claim) in claims { held[id] = claim }
        }
        return claims.map(\.0)
    }

    /// Wakes the claim loop every second (retry times coming due, leases other nodes let go).
    private func tick() async {
        while !Task.isCancelled && !finished.load(ordering: .relaxed) {
            try? await Task.sleep(for: .seconds(1))
            wakeUp.yield()
        }
    }

    /// LISTEN on a connection of its own; each notification wakes the claim loop.
    private func listen() async {
        var failing = false
        while !Task.isCancelled && !finished.load(ordering: .relaxed) {
            do {
                try await client.withConnection { connection in
                    try await connection.listen(on: Self.dueChannel) { notifications in
                        failing = false
                        for try await _ in notifications { self.wakeUp.yield() }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                if !failing { logger.notice("cluster: LISTEN interrupted", metadata: ["error": "\(String(reflecting: error))"]) }
                failing = true
                // The first to notice a server going away: MAIL gets 451 until a claim succeeds
                // again (every second).
                if case .unreachable = ClusterSettings.classify(error) { note(reachable: false, error) }
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Every third of the lease: the heartbeat, and the lease of every message this node holds.
    private func renewLeases() async {
        let interval = Duration.seconds(max(1, leaseSeconds / 3))
        while !Task.isCancelled && !finished.load(ordering: .relaxed) {
            try? await Task.sleep(for: interval)
            if Task.isCancelled || finished.load(ordering: .relaxed) { return }
            let ids = held.withLock { Array($0.keys) }
            let (node, lease, log) = (self.node, Double(leaseSeconds), self.logger)
            let sent = ContinuousClock.now
            do {
                try await client.query("UPDATE sluice_nodes SET heartbeat_at = now() WHERE name = \(node)", logger: log)
                if !ids.isEmpty {
                    var renewed: [String] = []
                    for try await id in try await client.query("""
                        UPDATE sluice_messages SET lease_until = now() + make_interval(secs => \(lease))
                        WHERE claimed_by = \(node) AND id = ANY(\(ids)) RETURNING id
                        """, logger: log).decode(String.self) {
                        renewed.append(id)
                    }
                    let until = sent + .seconds(leaseSeconds)
                    held.withLock { held in
                        for id in renewed { held[id]?.leaseUntil = until }
                    }
                }
            } catch {
                log.warning("cluster: cannot renew leases", metadata: ["error": "\(String(reflecting: error))"])
            }
        }
    }

    /// The message as the claim read it while its lease surely holds; otherwise (or when the
    /// claim did not read it) from PostgreSQL, if this node's claim still stands.
    public func claim(_ id: String) async throws -> QueuedMessage? {
        let margin = Duration.seconds(Double(leaseSeconds) / 10)
        let taken: ClaimedRow? = held.withLock { held in
            guard let claim = held[id], ContinuousClock.now + margin < claim.leaseUntil else { return nil }
            held[id]?.row = nil
            return claim.row
        }
        do {
            if let taken {
                let envelope = try JSONDecoder().decode(SpoolEnvelope.self, from: Data(taken.envelope.readableBytesView))
                let resolved = taken.hasOutcomes ? try await withDeadline(Self.commitDeadline) { try await self.outcomes(of: id) } : [:]
                return QueuedMessage(envelope: envelope, contentLength: taken.contentLength, resolved: resolved, warned: taken.warned, attempts: taken.attempts)
            }
            return try await withDeadline(Self.commitDeadline) { try await self.load(id) }
        } catch {
            // Its lease is no longer renewed: when it runs out, a node claims the message again.
            held.withLock { _ = $0.removeValue(forKey: id) }
            throw error
        }
    }

    private func load(_ id: String) async throws -> QueuedMessage? {
        let (node, log) = (self.node, self.logger)
        var found: (ByteBuffer, Int, Int, Bool)?
        for try await row in try await client.query("""
            SELECT envelope, content_length, attempts, warned FROM sluice_messages
            WHERE id = \(id) AND claimed_by = \(node) AND state = 'queued' AND lease_until > now()
            """, logger: log).decode((ByteBuffer, Int, Int, Bool).self) {
            found = row
        }
        guard let (json, length, attempts, warned) = found else {
            held.withLock { _ = $0.removeValue(forKey: id) }
            return nil
        }
        let envelope = try JSONDecoder().decode(SpoolEnvelope.self, from: Data(json.readableBytesView))
        return QueuedMessage(envelope: envelope, contentLength: length, resolved: try await outcomes(of: id), warned: warned, attempts: attempts)
    }

    /// What earlier attempts decided, by recipient.
    private func outcomes(of id: String) async throws -> [Int: RecipientResolution] {
        var resolved: [Int: RecipientResolution] = [:]
        for try await (index, delivered, reply) in try await client.query(
            "SELECT recipient, delivered, reply FROM sluice_outcomes WHERE message_id = \(id) AND recipient >= 0", logger: logger
        ).decode((Int, Bool, String?).self) {
            if delivered {
                resolved[index] = .delivered
            } else if let reply = reply.flatMap(SMTPReply.init(parsing:)) {
                resolved[index] = .failed(reply)
            }
        }
        return resolved
    }

    public func content(of message: QueuedMessage) -> MessageContent {
        let (client, id, length, log) = (self.client, message.id, message.contentLength, self.logger)
        if let inline = held.withLock({ $0[id]?.content }) {
            return .chunks(MessageBody(bytes: inline), length: length)
        }
        let body = MessageBody {
            var (seq, read) = (0, 0)
            return {
                guard read < length else { return nil }
                let at = seq
                let chunk: [UInt8]? = try await withDeadline(Self.commitDeadline) {
                    var chunk: [UInt8]?
                    for try await data in try await client.query(
                        "SELECT data FROM sluice_chunks WHERE message_id = \(id) AND seq = \(at)", logger: log
                    ).decode(ByteBuffer.self) {
                        chunk = Array(data.readableBytesView)
                    }
                    return chunk
                }
                // Gone: another node took the message over (this node's lease lapsed) and ended
                // it. The transport must abort, not send what it has so far as the whole message.
                guard let chunk, !chunk.isEmpty else { throw ContentGone(id: id, offset: read) }
                seq += 1
                read += chunk.count
                return chunk
            }
        }
        return .chunks(body, length: length)
    }

    public func retry(_ message: QueuedMessage, resolved: [(Int, RecipientResolution)], warned: Bool, after delay: Duration, domains: Set<String>) async throws {
        let (id, node, log) = (message.id, self.node, self.logger)
        let seconds = Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18
        // However this ends, this node stops renewing the claim: if the update fails, the lease
        // runs out and a node claims the message again.
        defer { held.withLock { _ = $0.removeValue(forKey: id) } }
        // The outcomes and the end of the claim in one transaction: a retry never repeats a
        // recipient resolved here, and a node whose claim was lost writes nothing.
        try await withDeadline(Self.commitDeadline) {
            try await self.client.withTransaction(logger: log) { connection in
                var ended = false
                for try await _ in try await connection.query("""
                    UPDATE sluice_messages SET due_at = now() + make_interval(secs => \(seconds)), attempts = attempts + 1,
                        domains = \(Array(domains).sorted()), claimed_by = NULL, lease_until = NULL, warned = warned OR \(warned)
                    WHERE id = \(id) AND claimed_by = \(node) RETURNING id
                    """, logger: log).decode(String.self) {
                    ended = true
                }
                guard ended else { return }
                for (index, resolution) in resolved {
                    let (delivered, reply): (Bool, String?)
                    switch resolution {
                    case .delivered: (delivered, reply) = (true, nil)
                    case .failed(let r): (delivered, reply) = (false, r.description.replacingNewlines())
                    }
                    try await connection.query("""
                        INSERT INTO sluice_outcomes (message_id, recipient, delivered, reply)
                        VALUES (\(id), \(index), \(delivered), \(reply)) ON CONFLICT DO NOTHING
                        """, logger: log)
                }
            }
        }
    }

    public func complete(_ message: QueuedMessage) async throws {
        try CrashPoint.reached(.delivered)
        defer { held.withLock { _ = $0.removeValue(forKey: message.id) } }
        try await completions.submit(message.id)
    }

    public func enqueueGenerated(content: [UInt8], envelope: SpoolEnvelope) async throws {
        var stored = envelope
        stored.size = content.count
        try await insert(envelope: stored, content: .memory(ByteBuffer(bytes: content)), state: .queued)
    }

    @discardableResult
    public func flush(_ id: String?) async throws -> Int {
        let log = logger
        let rows: PostgresRowSequence
        if let id {
            rows = try await client.query("""
                UPDATE sluice_messages SET due_at = now() WHERE id = \(id) AND state = 'queued' RETURNING id
                """, logger: log)
        } else {
            rows = try await client.query("""
                UPDATE sluice_messages SET due_at = now() WHERE state = 'queued' AND due_at > now() RETURNING id
                """, logger: log)
        }
        return try await due(rows)
    }

    public func flush(domain: String) async throws -> Int {
        let wanted = domain.lowercased()
        return try await due(try await client.query("""
            UPDATE sluice_messages SET due_at = now()
            WHERE state = 'queued' AND due_at > now() AND \(wanted) = ANY(domains) RETURNING id
            """, logger: logger))
    }

    /// Counts the messages a flush made due, and tells every node.
    private func due(_ rows: PostgresRowSequence) async throws -> Int {
        var count = 0
        for try await _ in rows.decode(String.self) { count += 1 }
        if count > 0 {
            try await client.query("SELECT pg_notify(\(Self.dueChannel), '')", logger: logger)
            wakeUp.yield()
        }
        return count
    }

    public func finish() {
        finished.store(true, ordering: .relaxed)
        wakeUp.yield()
        input.finish()
    }

    // MARK: Inspection

    public func list() async throws -> [QueueListing] {
        try await listings(try await client.query("""
            SELECT envelope, state, claimed_by FROM sluice_messages
            ORDER BY CASE state WHEN 'queued' THEN 0 WHEN 'held' THEN 1 ELSE 2 END, received_at, id
            """, logger: logger))
    }

    public func show(_ id: String) async throws -> QueueListing? {
        try await listings(try await client.query(
            "SELECT envelope, state, claimed_by FROM sluice_messages WHERE id = \(id)", logger: logger)).first
    }

    private func listings(_ rows: PostgresRowSequence) async throws -> [QueueListing] {
        var out: [QueueListing] = []
        for try await (json, state, claimedBy) in rows.decode((ByteBuffer, String, String?).self) {
            let envelope = try JSONDecoder().decode(SpoolEnvelope.self, from: Data(json.readableBytesView))
            var listing = QueueListing(envelope: envelope, state: QueueListing.State(rawValue: state) ?? .queued)
            listing.claimedBy = claimedBy
            out.append(listing)
        }
        return out
    }

    public func requestFlush(_ id: String?) async throws {
        if let id, try await show(id)?.state != .queued { throw QueueControl.Failure.noSuchMessage(id) }
        try await flush(id)
    }

    public func hold(_ id: String) async throws {
        try await change(id, "UPDATE sluice_messages SET state = 'held' WHERE id = \(id) AND state = 'queued' RETURNING id")
    }

    public func release(_ id: String) async throws {
        try await change(id, """
            UPDATE sluice_messages SET state = 'queued', due_at = now()
            WHERE id = \(id) AND state IN ('held', 'quarantined') RETURNING id
            """)
        try await client.query("SELECT pg_notify(\(Self.dueChannel), '')", logger: logger)
    }

    public func delete(_ id: String) async throws {
        try await change(id, "DELETE FROM sluice_messages WHERE id = \(id) RETURNING id")
    }

    /// Runs a statement on one message; none changed means there is no such message (in that state).
    private func change(_ id: String, _ statement: PostgresQuery) async throws {
        var changed = false
        for try await _ in try await client.query(statement, logger: logger).decode(String.self) { changed = true }
        if !changed { throw QueueControl.Failure.noSuchMessage(id) }
    }
}

/// A message's content rows were not there when its delivery read them.
struct ContentGone: Error, CustomStringConvertible {
    var id: String
    var offset: Int
    var description: String { "the content of \(id) is gone from PostgreSQL at octet \(offset) (another node ended the message)" }
}
