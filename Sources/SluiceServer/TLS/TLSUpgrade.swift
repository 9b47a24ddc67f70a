import NIOCore
import NIOSSL
import SluiceStageAPI

/// The channel side of TLS on a session: the handlers STARTTLS (or an smtps listener) puts in
/// front, and what the finished handshake gave.
enum TLSUpgrade {
    /// Puts the TLS handler in front, with a sniffer that reads the cipher off the ServerHello.
    static func begin(_ context: ChannelHandlerContext, tls: ServerTLS) throws -> ServerHelloSniffer {
        let sniffer = ServerHelloSniffer()
        try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context), position: .first)
        try context.pipeline.syncOperations.addHandler(sniffer, position: .first)
        return sniffer
    }

    /// The version and cipher of the finished handshake; the sniffer leaves the pipeline.
    static func finished(_ context: ChannelHandlerContext, sniffer: ServerHelloSniffer?) -> TLSInfo {
        let handler = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
        let version: String
        switch handler?.tlsVersion {
        case .tlsv13: version = "TLSv1.3"
        case .tlsv12: version = "TLSv1.2"
        case .tlsv11: version = "TLSv1.1"
        case .tlsv1: version = "TLSv1"
        default: version = "TLS"
        }
        let (cipher, bits) = ServerHelloSniffer.describe(sniffer?.cipherSuite ?? 0)
        if let sniffer { context.pipeline.syncOperations.removeHandler(sniffer, promise: nil) }
        return TLSInfo(version: version, cipher: cipher, bits: bits)
    }
}
