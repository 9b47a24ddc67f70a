import Logging
import NIOCore
import NIOPosix

/// The listening side: binds each `[[listener]]` and gives every connection its own session handler.
public final class SMTPServer: Sendable {
    public let context: ServerContext
    private let group: any EventLoopGroup
    private let addresses: [SocketAddress]

    public init(context: ServerContext, addresses: [SocketAddress], group: any EventLoopGroup) {
        self.context = context
        self.addresses = addresses
        self.group = group
    }

    /// Binds every listener; returns the bound channels (close them to stop accepting).
    public func bind() async throws -> [any Channel] {
        var channels: [any Channel] = []
        let server = context
        for address in addresses {
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.autoRead, value: false)
                .childChannelOption(.maxMessagesPerRead, value: 4)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(SMTPSessionHandler(server: server))
                    }
                }
            do {
                channels.append(try await bootstrap.bind(to: address).get())
            } catch {
                for c in channels { try? await c.close() }
                throw ListenerError(address: "\(address)", underlying: error)
            }
            context.logger.info("listening", metadata: ["address": "\(address)"])
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
