import NIOCore
import SluiceStageAPI

/// Reads the cipher suite the server chose from its ServerHello as it goes out (the one
/// handshake message that is plaintext in TLS 1.2 and 1.3; RFC 8446 4.1.3, RFC 5246 7.4.1.3),
/// because swift-nio-ssl does not expose the negotiated cipher. Sits below the TLS handler and
/// only looks at bytes; it removes itself once it has seen the ServerHello.
final class ServerHelloSniffer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The cipher suite's code, once seen.
    private(set) var cipherSuite: UInt16?
    private var seen: [UInt8] = []

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if cipherSuite == nil {
            let buffer = unwrapOutboundIn(data)
            seen += buffer.readableBytesView.prefix(max(0, 512 - seen.count))
            if let suite = Self.cipherSuite(inServerHello: seen) {
                cipherSuite = suite
                seen = []
            } else if seen.count >= 512 {
                seen = []
                cipherSuite = 0
            }
        }
        context.write(data, promise: promise)
    }

    /// The cipher suite of a ServerHello at the start of `bytes`: record header (5), handshake
    /// header (4), version (2), random (32), session id (1 + n), then the suite (2).
    static func cipherSuite(inServerHello bytes: [UInt8]) -> UInt16? {
        guard bytes.count >= 5 + 4 + 2 + 32 + 1, bytes[0] == 22, bytes[5] == 2 else { return nil }
        let sessionIDLength = Int(bytes[5 + 4 + 2 + 32])
        let at = 5 + 4 + 2 + 32 + 1 + sessionIDLength
        guard bytes.count >= at + 2 else { return nil }
        return UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1])
    }

    /// IANA names and key sizes of the suites BoringSSL negotiates.
    static func describe(_ suite: UInt16) -> (name: String, bits: Int) {
        switch suite {
        case 0x1301: ("TLS_AES_128_GCM_SHA256", 128)
        case 0x1302: ("TLS_AES_256_GCM_SHA384", 256)
        case 0x1303: ("TLS_CHACHA20_POLY1305_SHA256", 256)
        case 0xC02B: ("ECDHE-ECDSA-AES128-GCM-SHA256", 128)
        case 0xC02C: ("ECDHE-ECDSA-AES256-GCM-SHA384", 256)
        case 0xC02F: ("ECDHE-RSA-AES128-GCM-SHA256", 128)
        case 0xC030: ("ECDHE-RSA-AES256-GCM-SHA384", 256)
        case 0xCCA8: ("ECDHE-RSA-CHACHA20-POLY1305", 256)
        case 0xCCA9: ("ECDHE-ECDSA-CHACHA20-POLY1305", 256)
        case 0x009C: ("AES128-GCM-SHA256", 128)
        case 0x009D: ("AES256-GCM-SHA384", 256)
        case 0xC013: ("ECDHE-RSA-AES128-SHA", 128)
        case 0xC014: ("ECDHE-RSA-AES256-SHA", 256)
        case 0xC009: ("ECDHE-ECDSA-AES128-SHA", 128)
        case 0xC00A: ("ECDHE-ECDSA-AES256-SHA", 256)
        default: ("0x" + String(suite, radix: 16, uppercase: true), 0)
        }
    }
}
