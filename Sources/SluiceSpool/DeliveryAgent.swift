import Logging
import NIOCore
import NIOPosix
import SMTPCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
import SluiceStageAPI

/// Retry and limit settings of the queue manager (`[queue]`).
public struct QueuePolicy: Sendable {
    /// `min_backoff_s` (300): the delay before the first retry; it doubles with each attempt.
    public var minBackoff: Duration = .seconds(300)
    /// `max_backoff_s` (3600): the longest delay between attempts.
    public var maxBackoff: Duration = .seconds(3600)
    /// `max_lifetime_s` (432000, 5 days): a recipient still deferred after this is bounced.
    public var maxLifetime: Double = 432_000
    /// `delay_warning_s` (0 = off, as in Postfix; e.g. 14400 for 4 h): once a message has waited
    /// this long, its sender gets one "delayed" notification.
    public var delayWarning: Double = 0
    /// `destination_concurrency` (20): connections to one next hop at a time (see `RelayClient`).
    public var destinationConcurrency = 20
    /// `mx_port` (25): the port of mail hosts found by an `mx` route.
    public var mxPort = 25
    /// `bounce_size_limit` (50000, as Postfix): the largest message a failure notice returns
    /// whole when the sender asked for it (RET=FULL); a bigger one is returned as its headers.
    public var bounceSizeLimit = 50_000

    public init() {}

    func backoff(attempt: Int) -> Duration {
        var delay = minBackoff
        for _ in 1..<max(1, attempt) where delay < maxBackoff { delay *= 2 }
        return min(delay, maxBackoff)
    }
}

/// Takes queued messages out of the spool and delivers them, several at a time: into maildirs,
/// or to next hops over SMTP/LMTP. It only reads the spool; sessions hand it queue ids after
/// their 250 and startup recovery hands it the rest.
///
/// Each recipient ends delivered, deferred (retried with exponential backoff until
/// `max_lifetime_s`) or failed. Recipients resolved while others stay deferred are recorded in
/// `spool/state/<id>` (fsync'd) so a retry never repeats them. When all are resolved, failed
/// ones are reported to the sender in a DSN (RFC 3464), unless the sender is `<>`.
public final class DeliveryAgent: Sendable {
    private let spool: Spool
    private let maildir: MaildirDelivery
    private let relay: RelayClient
    private let mx: MXLookup
    private let policy: QueuePolicy
    private let bounces: BounceWriter
    private let logger: Logger
    private let concurrency: Int
    private let stream: AsyncStream<String>
    private let input: AsyncStream<String>.Continuation
    private let attempts = Mutex<[String: Int]>([:])

    /// - Parameter route: the destination for a bounce's recipient (the original sender), if any route takes it.
    public init(
        spool: Spool, hostname: String, relay: RelayClient, policy: QueuePolicy, concurrency: Int = 32,
        resolver: any DNSResolver = NoResolver(), route: @escaping @Sendable (Mailbox) -> String?, logger: Logger
    ) {
        self.spool = spool
        self.mx = MXLookup(resolver: resolver)
        self.maildir = MaildirDelivery(hostname: hostname)
        self.relay = relay
        self.policy = policy
        self.bounces = BounceWriter(spool: spool, hostname: hostname, returnLimit: policy.bounceSizeLimit, route: route)
        self.logger = logger
        self.concurrency = max(1, concurrency)
        (stream, input) = AsyncStream<String>.makeStream()
    }

    /// Schedules a queued message for delivery.
    public func enqueue(_ id: String) { input.yield(id) }

    /// A deferred message waiting for its next attempt.
    private struct Retry {
        var task: Task<Void, Never>
        /// Domains of the recipients still deferred (for ETRN).
        var domains: Set<String>
    }
    private let retries = Mutex<[String: Retry]>([:])

    private func scheduleRetry(_ id: String, after delay: Duration, domains: Set<String>) {
        let task = Task {
            try? await Task.sleep(for: delay)
            guard !Task.isCancelled else { return }
            if self.retries.withLock({ $0.removeValue(forKey: id) }) != nil { self.enqueue(id) }
        }
        retries.withLock { $0[id] = Retry(task: task, domains: domains) }
    }

    /// Attempts deferred messages now (`sluice queue flush`): all of them, or one by id (which may
    /// also be a message just released from hold). Returns how many were started.
    @discardableResult
    public func flush(_ id: String? = nil) -> Int {
        let due: [String] = retries.withLock { r in
            let ids = id.map { r[$0] == nil ? [] : [$0] } ?? Array(r.keys)
            for i in ids { r.removeValue(forKey: i)?.task.cancel() }
            return ids
        }
        for i in due { enqueue(i) }
        if let id, due.isEmpty, FileIO.exists(spool.layout.queueFile(id)) {
            enqueue(id)
            return 1
        }
        return due.count
    }

    /// ETRN (RFC 1985): attempts now the deferred messages with a recipient in `domain`.
    /// Returns how many were started.
    public func flush(domain: String) -> Int {
        let wanted = domain.lowercased()
        let due: [String] = retries.withLock { r in
            let ids = r.filter { $0.value.domains.contains(wanted) }.map(\.key)
            for i in ids { r.removeValue(forKey: i)?.task.cancel() }
            return ids
        }
        for i in due { enqueue(i) }
        return due.count
    }

    /// Stops taking new work; `run()` returns once deliveries in flight are done.
    public func finish() { input.finish() }

    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            var inFlight = 0
            for await id in stream {
                if inFlight >= concurrency {
                    await group.next()
                    inFlight -= 1
                }
                group.addTask { await self.deliver(id) }
                inFlight += 1
            }
            await group.waitForAll()
        }
    }

    private func deliver(_ id: String) async {
        let spool = self.spool
        let message: Spool.StoredMessage
        let resolved: [Int: DeliveryState.Resolution]
        do {
            (message, resolved) = try await spool.threadPool.runIfActive {
                (try spool.load(id), try DeliveryState.load(spool.layout, id))
            }
        } catch SpoolError.notFound {
            attempts.withLock { _ = $0.removeValue(forKey: id) }
            return
        } catch {
            logger.error("cannot read queued message", metadata: ["queue_id": "\(id)", "error": "\(error)"])
            return
        }
        let envelope = message.envelope
        var outcomes: [Int: RecipientOutcome] = [:]
        let pending = envelope.recipients.indices.filter { resolved[$0] == nil }
        var byDestination: [String: [Int]] = [:]
        for i in pending {
            let r = envelope.recipients[i]
            // An MX route delivers per recipient domain.
            let key = r.destination == "mx" ? "mx:\(r.address.normalizedDomain)" : r.destination
            byDestination[key, default: []].append(i)
        }

        await withTaskGroup(of: [(Int, RecipientOutcome)].self) { group in
            for (text, indices) in byDestination {
                group.addTask {
                    await self.deliver(message, indices: indices, destinationText: text)
                }
            }
            for await results in group {
                for (i, outcome) in results { outcomes[i] = outcome }
            }
        }
        await settle(message, resolved: resolved, outcomes: outcomes)
    }

    /// Delivers the recipients `indices` that share one destination.
    private func deliver(_ message: Spool.StoredMessage, indices: [Int], destinationText: String) async -> [(Int, RecipientOutcome)] {
        let envelope = message.envelope
        if destinationText.hasPrefix("mx:") {
            return await deliverToMX(message, indices: indices, domain: String(destinationText.dropFirst(3)))
        }
        guard let destination = Destination(parsing: destinationText, baseDirectory: "/") else {
            let reply = SMTPReply(554, "5.3.5", "unknown destination \(destinationText)")
            return indices.map { ($0, .failed(reply)) }
        }
        switch destination {
        case .maildir(let root):
            let maildir = self.maildir
            var results: [(Int, RecipientOutcome)] = []
            for i in indices {
                let recipient = envelope.recipients[i].address
                do {
                    _ = try await spool.threadPool.runIfActive {
                        try maildir.deliver(spoolPath: message.path, contentLength: message.contentLength, prefix: message.prefix,
                                            sender: envelope.sender, recipient: recipient, root: root)
                    }
                    results.append((i, .delivered(SMTPReply(250, "2.0.0", "delivered to maildir"))))
                } catch {
                    results.append((i, .deferred(SMTPReply(451, "4.3.0", "maildir delivery failed: \(error)"))))
                }
            }
            return results
        case .relay(let endpoint):
            let relayMessage = Self.relayMessage(message, indices)
            return Array(zip(indices, await relay.deliver(relayMessage, to: endpoint)))
        case .mx:
            return await deliverToMX(message, indices: indices, domain: envelope.recipients[indices[0]].address.normalizedDomain)
        }
    }

    /// The recipients `indices` of a queued message as one relay transaction.
    static func relayMessage(_ message: Spool.StoredMessage, _ indices: [Int]) -> RelayMessage {
        let envelope = message.envelope
        var relay = RelayMessage(
            sender: envelope.sender, recipients: indices.map { envelope.recipients[$0].address },
            path: message.path, contentLength: message.contentLength, prefix: message.prefix,
            body: envelope.body, smtputf8: envelope.smtputf8
        )
        relay.dsnReturn = envelope.dsnReturn
        relay.envelopeID = envelope.envelopeID
        relay.recipientParameters = indices.map { i in
            envelope.recipients[i].parameters.filter { $0.keyword == "NOTIFY" || $0.keyword == "ORCPT" }
        }
        return relay
    }

    /// Tries the domain's mail hosts in order; the next one only when a host cannot be reached
    /// or greets with an error (RFC 5321 5.1), as Postfix does.
    private func deliverToMX(_ message: Spool.StoredMessage, indices: [Int], domain: String) async -> [(Int, RecipientOutcome)] {
        switch await mx.targets(for: domain) {
        case .failed(let reply):
            return indices.map { ($0, .failed(reply)) }
        case .deferred(let reply):
            return indices.map { ($0, .deferred(reply)) }
        case .hosts(let hosts):
            let relayMessage = Self.relayMessage(message, indices)
            var last: [RecipientOutcome] = []
            for host in hosts {
                for address in host.addresses {
                    let outcomes = await relay.deliver(relayMessage, to: .mailHost(name: host.name, address: "\(address)", port: policy.mxPort))
                    let unreachable = outcomes.allSatisfy {
                        // unreachable, refusing to talk, or failing a TLS requirement (4.7.5): as Postfix, the next host
                        if case .deferred(let r) = $0 {
                            ["4.4.1", "4.7.5"].contains(r.enhancedCode?.description ?? "") || RelaySession.isGreetingRefusal(r)
                        } else { false }
                    }
                    if !unreachable { return Array(zip(indices, outcomes)) }
                    logger.info("mail host unusable, trying the next", metadata: [
                        "domain": "\(domain)", "host": "\(host.name)", "address": "\(address)", "reply": "\(outcomes.first?.reply.description ?? "")",
                    ])
                    last = outcomes
                }
            }
            return Array(zip(indices, last))
        }
    }

    /// Whether the recipient's NOTIFY (failures and delays when absent) asks for `event`.
    static func wants(_ event: DSNNotify, _ recipient: SpoolEnvelope.SpooledRecipient) -> Bool {
        RecipientDSN(parameters: recipient.parameters).events.contains(event)
    }

    /// Records the attempt: finishes the message (with a bounce when needed) or schedules a retry.
    private func settle(_ message: Spool.StoredMessage, resolved: [Int: DeliveryState.Resolution], outcomes: [Int: RecipientOutcome]) async {
        let envelope = message.envelope
        let id = envelope.id
        var outcomes = outcomes
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let age = Double(ts.tv_sec) - envelope.receivedAt
        let deferred = outcomes.filter { if case .deferred = $0.value { true } else { false } }
        if !deferred.isEmpty && age > policy.maxLifetime {
            for (i, outcome) in deferred {
                let r = outcome.reply
                // RFC 3463 X.4.7, delivery time expired: reported as 4.4.7 with Action: failed.
                outcomes[i] = .failed(SMTPReply(r.code, EnhancedStatusCode(4, 4, 7), ["message expired after \(Int(age)) s; last reply: \(r)"]))
            }
        }
        for (i, outcome) in outcomes.sorted(by: { $0.key < $1.key }) {
            logger.info("delivery", metadata: [
                "queue_id": "\(id)", "to": "<\(envelope.recipients[i].address)>",
                "via": "\(envelope.recipients[i].destination)", "status": "\(outcome)",
            ])
        }
        let stillDeferred = outcomes.contains { if case .deferred = $0.value { true } else { false } }
        // NOTIFY=SUCCESS: delivered into a mailbox, or relayed to a next hop that cannot notify.
        let successes = outcomes.sorted(by: { $0.key < $1.key }).compactMap { i, o -> DeliveryReport.Entry? in
            let recipient = envelope.recipients[i]
            guard case .delivered(let r) = o, Self.wants(.success, recipient) else { return nil }
            let final = recipient.destination.hasPrefix("maildir:") || recipient.destination.hasPrefix("lmtp")
            return DeliveryReport.Entry(recipient: recipient, reply: r, action: final ? .delivered : .relayed)
        }
        let spool = self.spool
        let bounces = self.bounces
        do {
            if stillDeferred {
                let newly: [(Int, DeliveryState.Resolution)] = outcomes.compactMap { i, o -> (Int, DeliveryState.Resolution)? in
                    switch o {
                    case .delivered, .passedOn: (i, .delivered)
                    case .failed(let r): (i, .failed(r))
                    case .deferred: nil
                    }
                }
                var record = newly
                var notice = successes
                if policy.delayWarning > 0, age >= policy.delayWarning, resolved[DeliveryState.warnedKey] == nil,
                   case .mailbox = envelope.sender {
                    notice += outcomes.sorted(by: { $0.key < $1.key }).compactMap { i, o -> DeliveryReport.Entry? in
                        guard case .deferred(let r) = o, Self.wants(.delay, envelope.recipients[i]) else { return nil }
                        return DeliveryReport.Entry(recipient: envelope.recipients[i], reply: r, action: .delayed)
                    }
                    record.append((DeliveryState.warnedKey, .delivered))
                }
                let entries = notice
                let noticeID = try await spool.threadPool.runIfActive { try bounces.write(for: message, entries: entries) }
                if !record.isEmpty {
                    let entries = record
                    try await spool.threadPool.runIfActive { try DeliveryState.append(spool.layout, id, entries) }
                }
                if let noticeID {
                    logger.info("delivery notice queued", metadata: ["queue_id": "\(id)", "notice_id": "\(noticeID)"])
                    enqueue(noticeID)
                }
                let n = attempts.withLock { a -> Int in
                    a[id, default: 0] += 1
                    return a[id]!
                }
                let delay = policy.backoff(attempt: n)
                logger.notice("deferred", metadata: ["queue_id": "\(id)", "retry_in": "\(delay)"])
                let domains = Set(envelope.recipients.indices.filter { outcomes[$0].map { if case .deferred = $0 { true } else { false } } ?? false }
                    .map { envelope.recipients[$0].address.normalizedDomain })
                scheduleRetry(id, after: delay, domains: domains)
                return
            }
            var failed: [DeliveryReport.Entry] = []
            var unreported = 0
            for (i, recipient) in envelope.recipients.enumerated() {
                var reply: SMTPReply?
                if case .failed(let r) = resolved[i] { reply = r }
                if case .failed(let r) = outcomes[i] { reply = r }
                guard let reply else { continue }
                if Self.wants(.failure, recipient) {
                    failed.append(DeliveryReport.Entry(recipient: recipient, reply: reply, action: .failed))
                } else {
                    unreported += 1
                }
            }
            let failures = failed
            let entries = failed + successes
            let bounceID = try await spool.threadPool.runIfActive { () throws -> String? in
                let bounceID = try bounces.write(for: message, entries: entries)
                try CrashPoint.reached(.delivered)
                try spool.remove(id)
                try DeliveryState.remove(spool.layout, id)
                return bounceID
            }
            attempts.withLock { _ = $0.removeValue(forKey: id) }
            if let bounceID {
                let what = failures.isEmpty ? "delivery notice queued" : "bounce queued"
                logger.info("\(what)", metadata: ["queue_id": "\(id)", "bounce_id": "\(bounceID)", "to": "\(envelope.sender)"])
                enqueue(bounceID)
            } else if !entries.isEmpty {
                logger.notice(failures.isEmpty ? "delivery notice not sent" : "failed recipients not reported", metadata: ["queue_id": "\(id)", "reason": "null sender or no route to the sender"])
            }
            if unreported > 0 {
                logger.info("failed recipients not reported", metadata: ["queue_id": "\(id)", "count": "\(unreported)", "reason": "NOTIFY did not ask for failures"])
            }
        } catch {
            logger.error("delivery bookkeeping failed, will retry", metadata: ["queue_id": "\(id)", "error": "\(error)"])
            scheduleRetry(id, after: policy.minBackoff, domains: Set(envelope.recipients.map(\.address.normalizedDomain)))
        }
    }
}
