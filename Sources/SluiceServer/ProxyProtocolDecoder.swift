import Logging
import NIOCore
import SluiceStageAPI

/// The PROXY protocol header (haproxy's proxy-protocol.txt, versions 1 and 2) in front of a
/// session, from a trusted proxy only. The real client address it carries is handed to the
/// session (`ProxiedAddress`) before the session starts; a header from an address outside
/// `proxy_from`, a malformed one, or none within the timeout closes the connection, and each
/// refusal is logged at notice with the peer and the reason.
///
/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.5`, which haproxy sends from a dual-stack
/// `bind :::25 v4v6`) stands for its IPv4 address in both versions, as RFC 7208 5 asks of SPF:
/// the session's client is then `192.0.2.5` for every rule.
final class ProxyProtocolDecoder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// The client the proxy saw; nil for `LOCAL`/`UNKNOWN` (the proxy's own connection).
    struct ProxiedAddress: Sendable {
        var client: (address: String, port: Int)?
        var server: (address: String, port: Int)?
    }

    enum Parse: Equatable {
        case needMore
        case invalid(String)
        /// The header's length and the addresses it gave (source, destination).
        case header(length: Int, source: (String, Int)?, destination: (String, Int)?)

        static func == (a: Parse, b: Parse) -> Bool {
            switch (a, b) {
            case (.needMore, .needMore): true
            case (.invalid(let x), .invalid(let y)): x == y
            case (.header(let l1, let s1, let d1), .header(let l2, let s2, let d2)):
                l1 == l2 && s1?.0 == s2?.0 && s1?.1 == s2?.1 && d1?.0 == d2?.0 && d1?.1 == d2?.1
            default: false
            }
        }
    }

    private let allowed: [CIDR]
    private let timeout: TimeAmount
    private let logger: Logger
    private var buffer = ByteBuffer()
    private var timer: Scheduled<Void>?
    private var done = false
    /// The header passed and the session was started (it then hears of the channel's end).
    private var passed = false
    private var peer = "?"

    init(allowed: [CIDR], timeout: TimeAmount = .seconds(10), logger: Logger = Logger(label: "sluice.proxy")) {
        self.allowed = allowed
        self.timeout = timeout
        self.logger = logger
    }

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    func channelActive(context: ChannelHandlerContext) {
        // Held back: the session starts once the header has told who the client is.
        peer = context.channel.remoteAddress?.ipAddress ?? "?"
        guard allowed.contains(where: { $0.contains(peer) }) else {
            return fail(context, "connection not from proxy_from")
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let limit = timeout
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (decoder, context) = bound.value
            decoder.fail(context, "no PROXY header within \(limit.nanoseconds / 1_000_000) ms")
        }
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        switch Self.parse(Array(buffer.readableBytesView)) {
        case .needMore:
            if buffer.readableBytes > 536 { fail(context, "header longer than 536 octets") } else { context.read() }
        case .invalid(let why):
            fail(context, why)
        case .header(let length, let source, let destination):
            done = true
            passed = true
            timer?.cancel()
            buffer.moveReaderIndex(forwardBy: length)
            let rest = buffer
            let proxied = ProxiedAddress(client: source, server: destination)
            context.fireUserInboundEventTriggered(proxied)
            context.fireChannelActive()
            if rest.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(rest))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        if !done {
            done = true
            logger.notice("PROXY header refused", metadata: ["peer": "\(peer)", "reason": "connection closed before a complete header"])
        }
        if passed { context.fireChannelInactive() }
    }

    /// Refuses the header: one notice line with the peer and the reason, then the connection closes.
    private func fail(_ context: ChannelHandlerContext, _ reason: String) {
        guard !done else { return }
        done = true
        timer?.cancel()
        logger.notice("PROXY header refused", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
        context.close(promise: nil)
    }

    /// Parses a v1 or v2 header at the start of `bytes`.
    static func parse(_ bytes: [UInt8]) -> Parse {
        if bytes.count < 12 {
            let sigPrefix = Array(v2Signature.prefix(bytes.count))
            let v1Prefix = Array("PROXY ".utf8.prefix(bytes.count))
            return bytes == sigPrefix || bytes == v1Prefix ? .needMore : .invalid("not a PROXY header")
        }
        if Array(bytes.prefix(12)) == v2Signature { return parseV2(bytes) }
        if bytes.starts(with: Array("PROXY ".utf8)) { return parseV1(bytes) }
        return .invalid("not a PROXY header")
    }

    /// `PROXY TCP4|TCP6|UNKNOWN src dst sport dport\r\n`, at most 107 octets.
    static func parseV1(_ bytes: [UInt8]) -> Parse {
        if let lf = bytes.firstIndex(of: 0x0A), lf == 0 || bytes[lf - 1] != 0x0D { return .invalid("v1 header with a bare LF") }
        guard let cr = bytes.firstIndex(of: 0x0D) else { return bytes.count > 107 ? .invalid("v1 header too long") : .needMore }
        guard cr + 1 < bytes.count else { return .needMore }
        guard bytes[cr + 1] == 0x0A, cr + 2 <= 107 else { return .invalid("v1 header not ended by CRLF") }
        let line = String(decoding: bytes[..<cr], as: UTF8.self)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 2 else { return .invalid("v1 header too short") }
        if fields[1] == "UNKNOWN" { return .header(length: cr + 2, source: nil, destination: nil) }
        guard fields[1] == "TCP4" || fields[1] == "TCP6" else { return .invalid("v1 protocol '\(fields[1].prefix(16))' not supported") }
        guard fields.count == 6 else { return .invalid("v1 header with \(fields.count) fields, not 6") }
        let v6 = fields[1] == "TCP6"
        guard let src = address(fields[2], v6: v6), let dst = address(fields[3], v6: v6) else {
            return .invalid("v1 \(fields[1]) header with a malformed address")
        }
        guard let sport = port(fields[4]), let dport = port(fields[5]) else { return .invalid("v1 header with a malformed port") }
        return .header(length: cr + 2, source: ("\(src)", sport), destination: ("\(dst)", dport))
    }

    /// An address of a TCP4 (dotted quad) or TCP6 (IPv6 text, an IPv4-mapped one given as IPv4)
    /// header, in any letter case.
    private static func address(_ text: String, v6: Bool) -> IPAddress? {
        guard text.contains(":") == v6, let address = IPAddress(text) else { return nil }
        return address
    }

    private static func port(_ s: String) -> Int? {
        guard !s.isEmpty, s.count <= 5, s.allSatisfy({ $0.isASCII && $0.isNumber }), s == "0" || !s.hasPrefix("0"),
              let p = Int(s), p <= 65535 else { return nil }
        return p
    }

    /// The binary v2 header: signature, version/command, family/protocol, length, addresses, TLVs.
    static func parseV2(_ bytes: [UInt8]) -> Parse {
        guard bytes.count >= 16 else { return .needMore }
        let versionCommand = bytes[12]
        guard versionCommand >> 4 == 2 else { return .invalid("v2 header of version \(versionCommand >> 4)") }
        let command = versionCommand & 0x0F
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        guard bytes.count >= 16 + length else { return length > 520 ? .invalid("v2 header too long") : .needMore }
        let total = 16 + length
        switch command {
        case 0:  // LOCAL: the proxy's own connection (health check)
            return .header(length: total, source: nil, destination: nil)
        case 1:  // PROXY
            let family = bytes[13] >> 4
            let body = Array(bytes[16..<total])
            switch family {
            case 1:  // AF_INET: 4 + 4 + 2 + 2
                guard body.count >= 12, let s = IPAddress(bytes: Array(body[0..<4])), let d = IPAddress(bytes: Array(body[4..<8])) else {
                    return .invalid("v2 IPv4 addresses truncated")
                }
                return .header(length: total, source: ("\(s)", Int(body[8]) << 8 | Int(body[9])),
                               destination: ("\(d)", Int(body[10]) << 8 | Int(body[11])))
            case 2:  // AF_INET6: 16 + 16 + 2 + 2
                guard body.count >= 36, let s = IPAddress(bytes: Array(body[0..<16]))?.unmapped,
                      let d = IPAddress(bytes: Array(body[16..<32]))?.unmapped else {
                    return .invalid("v2 IPv6 addresses truncated")
                }
                return .header(length: total, source: ("\(s)", Int(body[32]) << 8 | Int(body[33])),
                               destination: ("\(d)", Int(body[34]) << 8 | Int(body[35])))
            case 0:  // AF_UNSPEC
                return .header(length: total, source: nil, destination: nil)
            default:
                return .invalid("v2 address family \(family) not supported")
            }
        default:
            return .invalid("v2 command \(command)")
        }
    }
}
