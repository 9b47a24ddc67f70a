import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// The listening side: binds each `[[listener]]` and gives every connection its own session handler.
public final class SMTPServer: Sendable {
    public let context: ServerContext
    private let group: any EventLoopGroup
    private let listeners: [Listener]

    public init(context: ServerContext, listeners: [Listener], group: any EventLoopGroup) {
        self.context = context
        self.listeners = listeners
        self.group = group
    }

    /// Binds every listener; returns the bound channels (close them to stop accepting).
    public func bind() async throws -> [any Channel] {
        var channels: [any Channel] = []
        let server = context
        for listener in listeners {
            let address = listener.address
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.autoRead, value: false)
                .childChannelOption(.maxMessagesPerRead, value: 4)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let pipeline = channel.pipeline.syncOperations
                        if listener.proxyProtocol {
                            try pipeline.addHandler(ProxyProtocolDecoder(allowed: listener.proxyFrom, timeout: listener.proxyTimeout, logger: server.logger))
                        }
                        var sniffer: ServerHelloSniffer?
                        if listener.kind == .smtps, let tls = server.tls {
                            // Implicit TLS (RFC 8314): the handshake comes first.
                            let s = ServerHelloSniffer()
                            try pipeline.addHandler(s)
                            try pipeline.addHandler(NIOSSLServerHandler(context: tls.context))
                            sniffer = s
                        }
                        try pipeline.addHandler(SMTPSessionHandler(server: server, listener: listener, sniffer: sniffer))
                    }
                }
            do {
                channels.append(try await bootstrap.bind(to: address).get())
            } catch {
                for c in channels { try? await c.close() }
                throw ListenerError(address: "\(address)", underlying: error)
            }
            context.logger.info("listening", metadata: ["address": "\(address)", "kind": "\(listener.kind.rawValue)"])
        }
        return channels
    }

    /// Stops accepting, lets transactions finish for up to `grace`, then closes what is left.
    public func shutdown(listeners: [any Channel], grace: Duration) async {
        for c in listeners { try? await c.close() }
        context.beginShutdown()
        let deadline = ContinuousClock.now + grace
        while context.openSessions > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        if context.openSessions > 0 {
            context.logger.notice("closing sessions still open after the grace period", metadata: ["sessions": "\(context.openSessions)"])
            context.closeAll()
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}

/// A listener could not be bound.
public struct ListenerError: Error, CustomStringConvertible {
    public var address: String
    public var underlying: any Error
    public var description: String { "cannot listen on \(address): \(underlying)" }
}
