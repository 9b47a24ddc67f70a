import CMilter
import Foundation
import Logging
import NIOPosix
import Synchronization
import SluicePipeline
import SluiceStageAPI
import UnixSignals

/// `sluice milter`: the stage chain as a milter (libmilter), for an MTA that stays in place
/// (Postfix `smtpd_milters`, Sendmail `INPUT_MAIL_FILTER`).
///
/// Each libmilter callback runs the matching chain phase: connect, HELO, MAIL, RCPT, the data
/// phase (header section at end of header, then each body chunk), end of message (whose edits,
/// recorded trace fields and Authentication-Results become `smfi_*` modifications), and
/// disconnect at close. Verdicts become SMFIS_* statuses with `smfi_setreply`.
///
/// libmilter is a process-wide singleton: one server per process.
public final class MilterServer: Sendable {
    /// What the milter takes from the config besides the stages.
    public struct Settings: Sendable {
        /// `[server] hostname`: the authserv-id of Authentication-Results, `SessionInfo.serverHostname`.
        public var hostname: String
        /// `[server] max_message_bytes`; a `size-limit` stage may lower it (`552 5.3.4`).
        public var maxMessageBytes: Int
        /// `[server] relay_from`: clients the stages see as trusted (so are authenticated ones).
        public var relayFrom: [CIDR]
        /// libmilter's timeout for reading from and writing to the MTA, in seconds (nil: libmilter's 7210).
        public var timeoutSeconds: Int?
        /// Where message bodies are kept while their message is checked.
        public var temporaryDirectory: String

        public init(hostname: String, maxMessageBytes: Int, relayFrom: [CIDR], timeoutSeconds: Int? = nil, temporaryDirectory: String) {
            self.hostname = hostname
            self.maxMessageBytes = maxMessageBytes
            self.relayFrom = relayFrom
            self.timeoutSeconds = timeoutSeconds
            self.temporaryDirectory = temporaryDirectory
        }
    }

    /// libmilter would not start.
    public struct StartError: Error, CustomStringConvertible {
        public var description: String
    }

    public let socket: MilterSocket
    let chain: StageChain
    let settings: Settings
    let logger: Logger

    public init(chain: StageChain, socket: MilterSocket, settings: Settings, logger: Logger) {
        self.chain = chain
        self.socket = socket
        self.settings = settings
        self.logger = logger
    }

    /// Listens on `socket` and serves MTAs until SIGTERM or SIGINT (`smfi_stop`).
    public func run() async throws {
        guard smfi_register(MilterCallbacks.description) == MI_SUCCESS else {
            throw StartError(description: "libmilter refused the filter description (smfi_register)")
        }
        let spec = socket.description
        guard smfi_setconn(strdup(spec)) == MI_SUCCESS else {
            throw StartError(description: "libmilter cannot use the socket \(spec)")
        }
        if let seconds = settings.timeoutSeconds { _ = smfi_settimeout(Int32(seconds)) }
        _ = smfi_setbacklog(128)
        // Bind now, so that a port in use is an error here and not a line in syslog.
        guard smfi_opensocket(1) == MI_SUCCESS else {
            throw StartError(description: "cannot listen on \(spec) (in use, or not an address of this machine?)")
        }
        let threadPool = NIOThreadPool(numberOfThreads: 2)
        threadPool.start()
        MilterCallbacks.context.withLock {
            $0 = MilterServerContext(chain: chain, settings: settings, logger: logger, threadPool: threadPool)
        }
        logger.info("sluice milter started", metadata: [
            "socket": "\(spec)", "hostname": "\(settings.hostname)",
            "stages": "\(chain.entries.map(\.name).joined(separator: ","))",
        ])

        let running = RunningFlag()
        let signals = Task { [socket] in
            for await signal in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
                logger.info("stopping", metadata: ["signal": "\(signal)"])
                Self.stop(socket, while: running)
                return
            }
        }
        // smfi_main blocks for the server's life: it gets a thread of its own, not a cooperative one.
        let status = await withCheckedContinuation { (done: CheckedContinuation<Int32, Never>) in
            let thread = Thread {
                let status = smfi_main()
                running.value.store(false, ordering: .releasing)
                done.resume(returning: status)
            }
            thread.name = "libmilter"
            thread.start()
        }
        signals.cancel()
        MilterCallbacks.context.withLock { $0 = nil }
        try await threadPool.shutdownGracefully()
        if case .unix(let path) = socket { unlink(path) }
        guard status == MI_SUCCESS else { throw StartError(description: "libmilter stopped with an error (see syslog)") }
        logger.info("sluice milter stopped")
    }

    /// `smfi_stop`, which waits for libmilter's listener to wake (it checks every 5 s). It does
    /// so at once when a connection comes in, so one is made until `smfi_main` has returned; the
    /// listener takes it and the session ends at its first read.
    private static func stop(_ socket: MilterSocket, while running: RunningFlag) {
        Thread { _ = smfi_stop() }.start()
        Thread {
            for _ in 0..<50 where running.value.load(ordering: .acquiring) {
                usleep(100_000)
                socket.touch()
            }
        }.start()
    }
}

/// True until `smfi_main` returns.
private final class RunningFlag: Sendable {
    let value = Atomic<Bool>(true)
}

extension MilterSocket {
    /// Connects to the socket and closes at once (to wake libmilter's listener); errors are ignored.
    func touch() {
        switch self {
        case .unix(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let fd = Foundation.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return }
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            close(fd)
        case .inet(let port, let host), .inet6(let port, let host):
            var v6 = false
            if case .inet6 = self { v6 = true }
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_family = v6 ? AF_INET6 : AF_INET
            var list: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host ?? (v6 ? "::1" : "127.0.0.1"), String(port), &hints, &list) == 0, let first = list else { return }
            defer { freeaddrinfo(list) }
            let fd = Foundation.socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
            guard fd >= 0 else { return }
            _ = connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen)
            close(fd)
        }
    }
}
