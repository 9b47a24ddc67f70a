import Logging
import NIOCore
import NIOPosix
import SMTPCore
import Synchronization

/// Where a recipient's mail goes, from a route's `to` (`maildir:PATH`).
public enum Destination: Sendable, Hashable, CustomStringConvertible {
    case maildir(root: String)

    /// Parses a route's `to`; relative maildir paths resolve against `baseDirectory`.
    public init?(parsing text: String, baseDirectory: String) {
        if text.hasPrefix("maildir:") {
            let path = String(text.dropFirst("maildir:".count))
            guard !path.isEmpty else { return nil }
            self = .maildir(root: path.hasPrefix("/") ? path : baseDirectory + "/" + path)
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .maildir(let root): "maildir:\(root)"
        }
    }
}

/// Takes queued messages out of the spool and delivers them, several at a time. It only reads
/// the spool; sessions hand it queue ids after their 250 and startup recovery hands it the rest.
/// A failed delivery stays queued and is retried with a growing delay (1 min doubling to 1 h).
public final class DeliveryAgent: Sendable {
    private let spool: Spool
    private let maildir: MaildirDelivery
    private let logger: Logger
    private let concurrency: Int
    private let stream: AsyncStream<String>
    private let input: AsyncStream<String>.Continuation
    private let attempts = Mutex<[String: Int]>([:])

    public init(spool: Spool, hostname: String, concurrency: Int = 8, logger: Logger) {
        self.spool = spool
        self.maildir = MaildirDelivery(hostname: hostname)
        self.logger = logger
        self.concurrency = max(1, concurrency)
        (stream, input) = AsyncStream<String>.makeStream()
    }

    /// Schedules a queued message for delivery.
    public func enqueue(_ id: String) { input.yield(id) }

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
        do {
            let spool = self.spool
            let maildir = self.maildir
            let delivered = try await spool.threadPool.runIfActive { () throws -> [String] in
                let message = try spool.load(id)
                var done: [String] = []
                for recipient in message.envelope.recipients {
                    guard let destination = Destination(parsing: recipient.destination, baseDirectory: "/") else {
                        throw DeliveryError.unknownDestination(recipient.destination)
                    }
                    switch destination {
                    case .maildir(let root):
                        done.append(try maildir.deliver(
                            spoolPath: message.path, contentLength: message.contentLength,
                            sender: message.envelope.sender, recipient: recipient.address, root: root
                        ))
                    }
                }
                try CrashPoint.reached(.delivered)
                try spool.remove(id)
                return done
            }
            attempts.withLock { _ = $0.removeValue(forKey: id) }
            logger.info("delivered", metadata: ["queue_id": "\(id)", "files": "\(delivered.count)"])
        } catch SpoolError.notFound {
            attempts.withLock { _ = $0.removeValue(forKey: id) }
        } catch {
            let n = attempts.withLock { a -> Int in
                a[id, default: 0] += 1
                return a[id]!
            }
            let delay = min(3600, 60 << min(n - 1, 6))
            logger.error("delivery failed, will retry", metadata: ["queue_id": "\(id)", "error": "\(error)", "retry_in_s": "\(delay)"])
            Task {
                try? await Task.sleep(for: .seconds(delay))
                self.enqueue(id)
            }
        }
    }
}

enum DeliveryError: Error, CustomStringConvertible {
    case unknownDestination(String)
    var description: String {
        switch self {
        case .unknownDestination(let d): "unknown destination \(d)"
        }
    }
}
