import Foundation
import NIOCore
import NIOPosix
import SluiceStageAPI

/// A content scanner and its answer.
struct SpamVerdict: Sendable, Hashable {
    var score: Double
    var required: Double
    var symbols: [String]
    /// rspamd's recommended action (`reject`, `soft reject`, `add header`, `rewrite subject`,
    /// `greylist`, `no action`); nil from spamd.
    var action: String?
    var isSpam: Bool
}

/// Where messages are scanned: `spamd://host:port` (SpamAssassin, SPAMC/1.5) or
/// `rspamd://host:port` (rspamd's HTTP `/checkv2`).
enum SpamBackend: Sendable, Hashable, CustomStringConvertible {
    case spamd(host: String, port: Int)
    case rspamd(host: String, port: Int)

    init?(_ text: String) {
        let (scheme, defaultPort): (String, Int) = text.hasPrefix("spamd://") ? ("spamd://", 783)
            : text.hasPrefix("rspamd://") ? ("rspamd://", 11333) : ("", 0)
        guard !scheme.isEmpty else { return nil }
        var rest = Substring(text.dropFirst(scheme.count))
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        var host = rest
        var port = defaultPort
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()) else { return nil }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            guard let p = Int(rest[rest.index(after: colon)...]) else { return nil }
            host = rest[..<colon]
            port = p
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        self = scheme == "spamd://" ? .spamd(host: String(host), port: port) : .rspamd(host: String(host), port: port)
    }

    var description: String {
        switch self {
        case .spamd(let h, let p): "spamd://\(h):\(p)"
        case .rspamd(let h, let p): "rspamd://\(h):\(p)"
        }
    }
}

/// What the scanner is told besides the message (rspamd reads it as request headers).
struct ScanEnvelope: Sendable {
    var clientIP: String
    var helo: String?
    var sender: String
    var recipients: [String]
    var queueID: String
    var user: String?
    var hostname: String
}

/// One scan over one connection: the request, the message streamed from the spool, the reply.
enum SpamScanner {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The largest reply read from a scanner.
    static let maxReply = 1 << 20

    static func scan(
        backend: SpamBackend, envelope: ScanEnvelope, user: String?, length: Int,
        message: @escaping @Sendable () -> MessageStream, deadline: Duration
    ) async throws -> SpamVerdict {
        let (host, port): (String, Int) = switch backend {
        case .spamd(let h, let p), .rspamd(let h, let p): (h, p)
        }
        let ms = deadline.components.seconds * 1000 + deadline.components.attoseconds / 1_000_000_000_000_000
        let channel = try await ClientBootstrap(group: currentEventLoop())
            .connectTimeout(.milliseconds(max(1, min(ms, 10_000))))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        // The whole exchange is bounded: past the deadline the connection is closed under it.
        let watchdog = channel.channel.eventLoop.scheduleTask(in: .milliseconds(ms)) { channel.channel.close(promise: nil) }
        defer { watchdog.cancel() }
        let reply: ByteBuffer = try await channel.executeThenClose { inbound, outbound in
            let head: String
            switch backend {
            case .spamd:
                head = "SYMBOLS SPAMC/1.5\r\nContent-length: \(length)\r\n" + (user.map { "User: \($0)\r\n" } ?? "") + "\r\n"
            case .rspamd:
                var h = "POST /checkv2 HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\nContent-Length: \(length)\r\n"
                h += "IP: \(envelope.clientIP)\r\nFrom: \(envelope.sender)\r\nQueue-Id: \(envelope.queueID)\r\n"
                h += "MTA-Name: \(envelope.hostname)\r\n"
                if let helo = envelope.helo { h += "Helo: \(helo)\r\n" }
                for r in envelope.recipients { h += "Rcpt: \(r)\r\n" }
                if let u = envelope.user { h += "User: \(u)\r\n" }
                head = h + "\r\n"
            }
            try await outbound.write(ByteBuffer(string: head))
            var stream = message()
            while let chunk = try await stream.next() {
                try await outbound.write(ByteBuffer(bytes: chunk))
            }
            var reply = ByteBuffer()
            for try await var part in inbound {
                reply.writeBuffer(&part)
                if reply.readableBytes > maxReply { throw Failure(description: "\(backend) replied with more than \(maxReply) octets") }
                if case .rspamd = backend, Self.httpComplete(reply) { break }
            }
            return reply
        }
        switch backend {
        case .spamd: return try parseSpamd(Array(reply.readableBytesView))
        case .rspamd: return try parseRspamd(Array(reply.readableBytesView))
        }
    }

    /// A symbol name as it may go into a header field and a log line: letters, digits, `_.-`,
    /// at most 64 characters; anything else from a scanner is dropped.
    static func symbol(_ raw: String) -> String? {
        let s = raw.trimmingCharacters(in: .whitespaces)
        guard !s.isEmpty, s.count <= 64,
              s.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_.-".unicodeScalars.contains($0)) })
        else { return nil }
        return s
    }

    /// An HTTP response whose Content-Length octets have all arrived.
    static func httpComplete(_ buffer: ByteBuffer) -> Bool {
        let bytes = Array(buffer.readableBytesView)
        guard let end = bytes.firstRange(of: [13, 10, 13, 10]) else { return false }
        let head = String(decoding: bytes[..<end.lowerBound], as: UTF8.self).lowercased()
        guard let line = head.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
              let n = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) else { return false }
        return bytes.count - end.upperBound >= n
    }

    /// `SPAMD/1.1 0 EX_OK`, headers (`Spam: True ; 15.2 / 5.0`), empty line, the symbols.
    static func parseSpamd(_ bytes: [UInt8]) throws -> SpamVerdict {
        let text = String(decoding: bytes, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        let lines = parts[0].components(separatedBy: "\r\n")
        guard let status = lines.first, status.hasPrefix("SPAMD/") else {
            throw Failure(description: "spamd: not a SPAMD reply: \(String(text.prefix(80)).debugDescription)")
        }
        let fields = status.split(separator: " ", maxSplits: 2)
        guard fields.count >= 2, fields[1] == "0" else { throw Failure(description: "spamd: \(status)") }
        guard let spam = lines.first(where: { $0.lowercased().hasPrefix("spam:") }) else {
            throw Failure(description: "spamd: no Spam header in the reply")
        }
        // Spam: True ; 15.2 / 5.0
        let value = spam.dropFirst(5)
        let halves = value.split(separator: ";", maxSplits: 1)
        guard halves.count == 2 else { throw Failure(description: "spamd: malformed \(spam.debugDescription)") }
        let isSpam = halves[0].trimmingCharacters(in: .whitespaces).lowercased() == "true"
            || halves[0].trimmingCharacters(in: .whitespaces).lowercased() == "yes"
        let scores = halves[1].split(separator: "/").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard scores.count == 2, let score = scores[0], let required = scores[1] else {
            throw Failure(description: "spamd: malformed \(spam.debugDescription)")
        }
        let body = parts.count > 1 ? parts[1...].joined(separator: "\r\n\r\n") : ""
        let symbols = body.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").compactMap { symbol(String($0)) }
        return SpamVerdict(score: score, required: required, symbols: symbols, action: nil, isSpam: isSpam)
    }

    /// An HTTP/1.1 200 reply with rspamd's JSON (`score`, `required_score`, `action`, `symbols`).
    static func parseRspamd(_ bytes: [UInt8]) throws -> SpamVerdict {
        guard let end = bytes.firstRange(of: [13, 10, 13, 10]) else { throw Failure(description: "rspamd: incomplete HTTP reply") }
        let head = String(decoding: bytes[..<end.lowerBound], as: UTF8.self)
        guard let status = head.components(separatedBy: "\r\n").first, status.hasPrefix("HTTP/1."),
              status.split(separator: " ").dropFirst().first == "200" else {
            throw Failure(description: "rspamd: \(head.components(separatedBy: "\r\n").first ?? "no status")")
        }
        let body = Data(bytes[end.upperBound...])
        guard let json = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
              let score = (json["score"] as? NSNumber)?.doubleValue else {
            throw Failure(description: "rspamd: the reply is not a scan result")
        }
        let required = (json["required_score"] as? NSNumber)?.doubleValue ?? 15
        let action = json["action"] as? String
        let symbols = (json["symbols"] as? [String: Any]).map { $0.keys.compactMap(symbol).sorted() } ?? []
        let isSpam = action == "reject" || action == "add header" || action == "rewrite subject" || score >= required
        return SpamVerdict(score: score, required: required, symbols: symbols, action: action, isSpam: isSpam)
    }
}

/// The message as the scanner gets it: the header section, then the body chunks.
struct MessageStream {
    private var head: [UInt8]?
    private var body: MessageBody.AsyncIterator

    init(headers: [HeaderField], body: MessageBody) {
        var h: [UInt8] = []
        for f in headers { h += f.wireBytes }
        h += [13, 10]
        head = h
        self.body = body.makeAsyncIterator()
    }

    mutating func next() async throws -> [UInt8]? {
        if let h = head {
            head = nil
            return h
        }
        return try await body.next()
    }
}
