import Logging
import NIOCore
import NIOPosix
import SMTPCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
import SluiceSpool
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

/// Delivers queued messages, several at a time: into maildirs, or to next hops over SMTP/LMTP.
/// It reaches the queue only through `QueueStore`: it takes the messages the store says are
/// due, reads their content through it, and records there what became of each recipient.
///
/// Each recipient ends delivered, deferred (retried with exponential backoff until
/// `max_lifetime_s`) or failed. Recipients resolved while others stay deferred are recorded in
/// the store so a retry never repeats them. When all are resolved, failed ones are reported to
/// the sender in a DSN (RFC 3464), unless the sender is `<>`.
public final class DeliveryAgent: Sendable {
    private let store: any QueueStore
    private let threadPool: NIOThreadPool
    private let maildir: MaildirDelivery
    private let relay: RelayClient
    private let mx: MXLookup
    private let policy: QueuePolicy
    private let bounces: BounceWriter
    private let logger: Logger
    private let concurrency: Int

    /// - Parameters:
    ///   - threadPool: runs the blocking calls of maildir delivery.
    ///   - route: the destination for a bounce's recipient (the original sender), if any route takes it.
    public init(
        store: any QueueStore, threadPool: NIOThreadPool, hostname: String, relay: RelayClient, policy: QueuePolicy, concurrency: Int = 32,
        resolver: any DNSResolver = NoResolver(), route: @escaping @Sendable (Mailbox) -> Destination?, logger: Logger
    ) {
        self.store = store
        self.threadPool = threadPool
        self.mx = MXLookup(resolver: resolver)
        self.maildir = MaildirDelivery(hostname: hostname)
        self.relay = relay
        self.policy = policy
        self.bounces = BounceWriter(store: store, threadPool: threadPool, hostname: hostname, returnLimit: policy.bounceSizeLimit, route: route)
        self.logger = logger
        self.concurrency = max(1, concurrency)
    }

    /// Delivers due messages until the store's `due` sequence ends (`QueueStore.finish()`),
    /// then waits for deliveries in flight.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            var inFlight = 0
            for await id in store.due {
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

    /// Recipients that go out together: one destination, and for `mx` one recipient domain.
    private struct Hop: Hashable {
        var destination: Destination
        var domain: String?
    }

    private func deliver(_ id: String) async {
        let message: QueuedMessage
        do {
            guard let claimed = try await store.claim(id) else { return }
            message = claimed
        } catch {
            logger.error("cannot read queued message", metadata: ["queue_id": "\(id)", "error": "\(error)"])
            return
        }
        let envelope = message.envelope
        var outcomes: [Int: RecipientOutcome] = [:]
        var byHop: [Hop: [Int]] = [:]
        for i in envelope.recipients.indices where message.resolved[i] == nil {
            let r = envelope.recipients[i]
            // An MX route delivers per recipient domain.
            let hop = Hop(destination: r.destination, domain: r.destination == .mx ? r.address.normalizedDomain : nil)
            byHop[hop, default: []].append(i)
        }
        let content = store.content(of: message)
        await withTaskGroup(of: [(Int, RecipientOutcome)].self) { group in
            for (hop, indices) in byHop {
                group.addTask {
                    await self.deliver(message, content: content, indices: indices, to: hop)
                }
            }
            for await results in group {
                for (i, outcome) in results { outcomes[i] = outcome }
            }
        }
        await settle(message, outcomes: outcomes)
    }

    /// Delivers the recipients `indices` that share one next hop.
    private func deliver(_ message: QueuedMessage, content: MessageContent, indices: [Int], to hop: Hop) async -> [(Int, RecipientOutcome)] {
        let envelope = message.envelope
        switch hop.destination {
        case .maildir(let root):
            var results: [(Int, RecipientOutcome)] = []
            let prefix = message.prefix
            for i in indices {
                do {
                    try await maildir.deliver(
                        content, prefix: prefix, sender: envelope.sender, recipient: envelope.recipients[i].address,
                        root: root, threadPool: threadPool
                    )
                    results.append((i, .delivered(SMTPReply(250, "2.0.0", "delivered to maildir"))))
                } catch {
                    results.append((i, .deferred(SMTPReply(451, "4.3.0", "maildir delivery failed: \(error)"))))
                }
            }
            return results
        case .relay(let endpoint):
            let relayMessage = Self.relayMessage(message, content: content, indices)
            return Array(zip(indices, await relay.deliver(relayMessage, to: endpoint)))
        case .mx:
            return await deliverToMX(message, content: content, indices: indices, domain: hop.domain ?? envelope.recipients[indices[0]].address.normalizedDomain)
        }
    }

    /// The recipients `indices` of a queued message as one relay transaction.
    static func relayMessage(_ message: QueuedMessage, content: MessageContent, _ indices: [Int]) -> RelayMessage {
        let envelope = message.envelope
        var relay = RelayMessage(
            sender: envelope.sender, recipients: indices.map { envelope.recipients[$0].address },
            content: content, prefix: message.prefix,
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
    private func deliverToMX(_ message: QueuedMessage, content: MessageContent, indices: [Int], domain: String) async -> [(Int, RecipientOutcome)] {
        switch await mx.targets(for: domain) {
        case .failed(let reply):
            return indices.map { ($0, .failed(reply)) }
        case .deferred(let reply):
            return indices.map { ($0, .deferred(reply)) }
        case .hosts(let hosts):
            let relayMessage = Self.relayMessage(message, content: content, indices)
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
    private func settle(_ message: QueuedMessage, outcomes: [Int: RecipientOutcome]) async {
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
            return DeliveryReport.Entry(recipient: recipient, reply: r, action: recipient.destination.isFinal ? .delivered : .relayed)
        }
        do {
            if stillDeferred {
                let newly: [(Int, RecipientResolution)] = outcomes.sorted(by: { $0.key < $1.key }).compactMap { i, o -> (Int, RecipientResolution)? in
                    switch o {
                    case .delivered, .passedOn: (i, .delivered)
                    case .failed(let r): (i, .failed(r))
                    case .deferred: nil
                    }
                }
                var notice = successes
                var warned = false
                if policy.delayWarning > 0, age >= policy.delayWarning, !message.warned, case .mailbox = envelope.sender {
                    notice += outcomes.sorted(by: { $0.key < $1.key }).compactMap { i, o -> DeliveryReport.Entry? in
                        guard case .deferred(let r) = o, Self.wants(.delay, envelope.recipients[i]) else { return nil }
                        return DeliveryReport.Entry(recipient: envelope.recipients[i], reply: r, action: .delayed)
                    }
                    warned = true
                }
                if let noticeID = try await bounces.write(for: message, content: store.content(of: message), entries: notice) {
                    logger.info("delivery notice queued", metadata: ["queue_id": "\(id)", "notice_id": "\(noticeID)"])
                }
                let delay = policy.backoff(attempt: message.attempts + 1)
                logger.notice("deferred", metadata: ["queue_id": "\(id)", "retry_in": "\(delay)"])
                let domains = Set(envelope.recipients.indices.filter { outcomes[$0].map { if case .deferred = $0 { true } else { false } } ?? false }
                    .map { envelope.recipients[$0].address.normalizedDomain })
                try await store.retry(message, resolved: newly, warned: warned, after: delay, domains: domains)
                return
            }
            var failed: [DeliveryReport.Entry] = []
            var unreported = 0
            for (i, recipient) in envelope.recipients.enumerated() {
                var reply: SMTPReply?
                if case .failed(let r) = message.resolved[i] { reply = r }
                if case .failed(let r) = outcomes[i] { reply = r }
                guard let reply else { continue }
                if Self.wants(.failure, recipient) {
                    failed.append(DeliveryReport.Entry(recipient: recipient, reply: reply, action: .failed))
                } else {
                    unreported += 1
                }
            }
            let entries = failed + successes
            let bounceID = try await bounces.write(for: message, content: store.content(of: message), entries: entries)
            try await store.complete(message)
            if let bounceID {
                let what = failed.isEmpty ? "delivery notice queued" : "bounce queued"
                logger.info("\(what)", metadata: ["queue_id": "\(id)", "bounce_id": "\(bounceID)", "to": "\(envelope.sender)"])
            } else if !entries.isEmpty {
                logger.notice(failed.isEmpty ? "delivery notice not sent" : "failed recipients not reported", metadata: ["queue_id": "\(id)", "reason": "null sender or no route to the sender"])
            }
            if unreported > 0 {
                logger.info("failed recipients not reported", metadata: ["queue_id": "\(id)", "count": "\(unreported)", "reason": "NOTIFY did not ask for failures"])
            }
        } catch {
            logger.error("delivery bookkeeping failed, will retry", metadata: ["queue_id": "\(id)", "error": "\(error)"])
            do {
                try await store.retry(message, resolved: [], warned: false, after: policy.minBackoff, domains: Set(envelope.recipients.map(\.address.normalizedDomain)))
            } catch {
                // The store will hand the message out again (a file store at its next start, a
                // database store when the claim's lease runs out).
                logger.error("cannot schedule the retry", metadata: ["queue_id": "\(id)", "error": "\(error)"])
            }
        }
    }
}
