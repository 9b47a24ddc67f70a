import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A tiny TCP server on 127.0.0.1 and an ephemeral port, for the fake peers of the spam and
/// milter stage tests (spamd, rspamd, a milter). Plain blocking sockets on background threads:
/// each accepted connection runs `handler` on its own thread. Every wait is bounded (reads give
/// up after `readTimeout`, the accept loop polls), so a test that goes wrong fails instead of
/// hanging, and `stop()` ends the accept loop.
final class LoopbackPeer: Sendable {
    let port: Int
    private let state = State()
    private let finished: AsyncStream<Void>

    private final class State: Sendable {
        let stopped = Atomic<Bool>(false)
        let accepted = Atomic<Int>(0)
    }

    init(readTimeout: Int = 5, handler: @escaping @Sendable (PeerConnection) -> Void) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw PeerError("socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw PeerError("bind/listen: \(errno)")
        }
        port = Self.localPort(fd)
        let (finished, handlerDone) = AsyncStream<Void>.makeStream()
        self.finished = finished
        let state = self.state
        Thread.detachNewThread {
            defer { close(fd) }
            while !state.stopped.load(ordering: .relaxed) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 20) > 0 else { continue }
                let client = accept(fd, nil, nil)
                guard client >= 0 else { continue }
                state.accepted.add(1, ordering: .relaxed)
                var tv = timeval(tv_sec: readTimeout, tv_usec: 0)
                setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                let connection = PeerConnection(fd: client)
                Thread.detachNewThread {
                    handler(connection)
                    connection.close()
                    handlerDone.yield()
                }
            }
        }
    }

    deinit { stop() }

    /// How many connections were accepted so far.
    var connections: Int { state.accepted.load(ordering: .relaxed) }

    /// Waits until `count` handlers have returned (each is bounded by the read timeout).
    func handlersFinished(_ count: Int = 1) async {
        var it = finished.makeAsyncIterator()
        for _ in 0..<count { _ = await it.next() }
    }

    func stop() { state.stopped.store(true, ordering: .relaxed) }

    static func localPort(_ fd: Int32) -> Int {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// A loopback port that refuses connections: bound (so nobody else gets it) but not listening,
/// for as long as this value lives.
final class RefusingPort: Sendable {
    let port: Int
    private let fd: Int32

    init() {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        port = LoopbackPeer.localPort(fd)
        self.fd = fd
    }

    deinit { close(fd) }
}

struct PeerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// One accepted connection, used by one handler thread only.
final class PeerConnection: @unchecked Sendable {
    private var fd: Int32
    private var buffer: [UInt8] = []
    /// False once the peer closed its side, a read failed or timed out.
    private(set) var open = true

    init(fd: Int32) { self.fd = fd }

    /// Reads more into the buffer; false at end of stream, on error or timeout.
    private func fill() -> Bool {
        guard open, fd >= 0 else { return false }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else {
            open = false
            return false
        }
        buffer += chunk[..<n]
        return true
    }

    /// Exactly `count` octets, or nil when the stream ends first.
    func read(exactly count: Int) -> [UInt8]? {
        while buffer.count < count { guard fill() else { return nil } }
        let out = Array(buffer[..<count])
        buffer.removeFirst(count)
        return out
    }

    /// Everything up to and including `delimiter`, or nil when the stream ends first.
    func read(through delimiter: String) -> [UInt8]? {
        let d = Array(delimiter.utf8)
        while true {
            if let r = buffer.firstRange(of: d) {
                let out = Array(buffer[..<r.upperBound])
                buffer.removeFirst(r.upperBound)
                return out
            }
            guard fill() else { return nil }
        }
    }

    /// Waits until the client closes its side (or the read timeout passes).
    func drain() {
        while fill() { buffer.removeAll() }
    }

    func write(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count, fd >= 0 {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return }
            sent += n
        }
    }

    func write(_ text: String) { write(Array(text.utf8)) }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        open = false
    }
}

/// Values a handler thread hands to the test: appended under a lock, read after the exchange.
final class Captured<Value: Sendable>: Sendable {
    private let values = Mutex<[Value]>([])
    func append(_ v: Value) { values.withLock { $0.append(v) } }
    var all: [Value] { values.withLock { $0 } }
}
