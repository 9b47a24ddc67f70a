import NIOCore
import Synchronization

/// Keeps the first error the TLS handler reports on a relay connection. A failed handshake
/// also fails the pending EHLO write and closes the channel, and the conversation may see
/// one of those first ("I/O on closed channel"); the deferral must name the real cause
/// (an unverified chain, a name mismatch).
final class TLSHandshakeErrorRecorder: Sendable {
    private let first = Mutex<String?>(nil)

    /// The first error, in words; nil when the TLS handler reported none.
    var reason: String? { first.withLock { $0 } }

    /// A handler to sit right behind the TLS handler: it notes errors and passes everything on.
    func handler(describe: @escaping @Sendable (any Error) -> String) -> some ChannelInboundHandler {
        Handler(recorder: self, describe: describe)
    }

    fileprivate func note(_ text: String) {
        first.withLock { if $0 == nil { $0 = text } }
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let recorder: TLSHandshakeErrorRecorder
        let describe: @Sendable (any Error) -> String

        init(recorder: TLSHandshakeErrorRecorder, describe: @escaping @Sendable (any Error) -> String) {
            self.recorder = recorder
            self.describe = describe
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            recorder.note(describe(error))
            context.fireErrorCaught(error)
        }
    }
}
