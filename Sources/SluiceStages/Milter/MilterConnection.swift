import NIOCore
import NIOPosix

/// One connection to a milter: frames out, frames in, every wait bounded.
///
/// `@unchecked Sendable`: the frame handler lives on the channel's event loop and is only
/// touched there (`NIOLoopBound`); the rest is immutable.
final class MilterConnection: @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// `inet:host:port`, `inet6:host:port`, `unix:/path` (or a bare path), as Postfix writes them.
    enum Socket: Sendable, Hashable, CustomStringConvertible {
        case inet(host: String, port: Int)
        case unix(path: String)

        init?(_ text: String) {
            if text.hasPrefix("unix:") || text.hasPrefix("local:") {
                let path = String(text.drop(while: { $0 != ":" }).dropFirst())
                guard !path.isEmpty else { return nil }
                self = .unix(path: path)
            } else if text.hasPrefix("/") {
                self = .unix(path: text)
            } else if text.hasPrefix("inet:") || text.hasPrefix("inet6:") {
                var rest = Substring(text.drop(while: { $0 != ":" }).dropFirst())
                // Sendmail's form is port@host; Postfix's is host:port.
                if let at = rest.firstIndex(of: "@"), let port = Int(rest[..<at]) {
                    let host = rest[rest.index(after: at)...]
                    guard !host.isEmpty, (1...65535).contains(port) else { return nil }
                    self = .inet(host: String(host), port: port)
                    return
                }
                if rest.hasPrefix("[") , let close = rest.firstIndex(of: "]") {
                    let host = rest[rest.index(after: rest.startIndex)..<close]
                    rest = rest[rest.index(after: close)...]
                    guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()), (1...65535).contains(port) else { return nil }
                    self = .inet(host: String(host), port: port)
                    return
                }
                guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
                      (1...65535).contains(port), colon > rest.startIndex else { return nil }
                self = .inet(host: String(rest[..<colon]), port: port)
            } else {
                return nil
            }
        }

        var description: String {
            switch self {
            case .inet(let h, let p): "inet:\(h):\(p)"
            case .unix(let path): "unix:\(path)"
            }
        }
    }

    private let channel: any Channel
    private let reader: NIOLoopBound<FrameReader>

    private init(channel: any Channel, reader: NIOLoopBound<FrameReader>) {
        self.channel = channel
        self.reader = reader
    }

    static func open(_ socket: Socket, timeout: Duration) async throws -> MilterConnection {
        let ms = Int64(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let bootstrap = ClientBootstrap(group: currentEventLoop()).connectTimeout(.milliseconds(ms))
        let channel: any Channel
        do {
            switch socket {
            case .inet(let host, let port): channel = try await bootstrap.connect(host: host, port: port).get()
            case .unix(let path): channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            }
        } catch {
            throw Failure(description: "cannot connect to \(socket): \(error)")
        }
        let reader = try await channel.eventLoop.submit {
            let reader = FrameReader(eventLoop: channel.eventLoop)
            try channel.pipeline.syncOperations.addHandler(reader)
            return NIOLoopBound(reader, eventLoop: channel.eventLoop)
        }.get()
        return MilterConnection(channel: channel, reader: reader)
    }

    func send(_ bytes: [UInt8]) async throws {
        do {
            try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
        } catch {
            throw Failure(description: "write failed: \(error)")
        }
    }

    /// The next frame, within `timeout`; on timeout the connection is closed.
    func read(timeout: Duration) async throws -> (UInt8, [UInt8]) {
        let reader = self.reader
        let ms = Int64(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        return try await channel.eventLoop.flatSubmit {
            reader.value.next(timeout: .milliseconds(ms))
        }.get()
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Cuts milter frames out of the byte stream and hands them to whoever waits.
final class FrameReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let eventLoop: any EventLoop
    private var buffer = ByteBuffer()
    private var frames = CircularBuffer<(UInt8, [UInt8])>()
    private var waiting: EventLoopPromise<(UInt8, [UInt8])>?
    private var timer: Scheduled<Void>?
    private var failure: (any Error)?
    private var context: ChannelHandlerContext?

    init(eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        while buffer.readableBytes >= 4 {
            let length = Int(buffer.getInteger(at: buffer.readerIndex, as: UInt32.self)!)
            guard length >= 1, length <= Milter.maxFrame else {
                fail(MilterConnection.Failure(description: "frame of \(length) octets"))
                context.close(promise: nil)
                return
            }
            guard buffer.readableBytes >= 4 + length else { break }
            buffer.moveReaderIndex(forwardBy: 4)
            let command = buffer.readInteger(as: UInt8.self)!
            let data = buffer.readBytes(length: length - 1)!
            frames.append((command, data))
        }
        buffer.discardReadBytes()
        deliver()
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(MilterConnection.Failure(description: "the milter closed the connection"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(MilterConnection.Failure(description: "\(error)"))
        context.close(promise: nil)
    }

    private func fail(_ error: any Error) {
        if failure == nil { failure = error }
        deliver()
    }

    private func deliver() {
        guard let promise = waiting else { return }
        if let frame = frames.popFirst() {
            waiting = nil
            timer?.cancel()
            promise.succeed(frame)
        } else if let failure {
            waiting = nil
            timer?.cancel()
            promise.fail(failure)
        }
    }

    func next(timeout: TimeAmount) -> EventLoopFuture<(UInt8, [UInt8])> {
        let promise = eventLoop.makePromise(of: (UInt8, [UInt8]).self)
        if waiting != nil {
            promise.fail(MilterConnection.Failure(description: "concurrent reads"))
            return promise.futureResult
        }
        waiting = promise
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        timer = eventLoop.scheduleTask(in: timeout) {
            let reader = bound.value
            reader.fail(MilterConnection.Failure(description: "no reply within \(timeout.nanoseconds / 1_000_000) ms"))
            reader.context?.close(promise: nil)
        }
        deliver()
        return promise.futureResult
    }
}
