import CUnbound
import SluiceStageAPI
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The gateway's resolver: libunbound's cache and forwarding, driven by a thread of its own.
///
/// Queries go to libunbound's background worker (`ub_resolve_async`, threaded mode); one
/// dedicated thread polls `ub_fd` and runs `ub_process`, which calls back with the answers.
/// No event loop ever blocks on DNS. Timeouts are kept here, per query (`[dns] timeout_ms`):
/// an overdue query is cancelled in libunbound and fails with `DNSError.timeout`.
public final class UnboundResolver: DNSResolver {
    private let context: Context
    private let thread: Thread
    /// Answers kept here for their TTL, so a warm lookup costs no thread hop at all
    /// (libunbound's own cache sits behind this one).
    private let cache = SharedAnswerCache()

    /// Starts the resolver and its thread.
    /// - Throws: `DNSError` when libunbound refuses the configuration.
    public init(configuration: DNSConfiguration) throws {
        guard let ctx = ub_ctx_create() else { throw DNSError(.failure, "libunbound: cannot create a context") }
        func check(_ rc: Int32, _ what: String) throws {
            if rc != 0 {
                ub_ctx_delete(ctx)
                throw DNSError(.failure, "libunbound: \(what): \(String(cString: ub_strerror(rc)))")
            }
        }
        try check(ub_ctx_async(ctx, 1), "threaded mode")
        // Forwarders on loopback (a local cache, the tests' server) must be allowed.
        try check(ub_ctx_set_option(ctx, "do-not-query-localhost:", "no"), "do-not-query-localhost")
        if configuration.servers.isEmpty {
            try check(ub_ctx_resolvconf(ctx, nil), "reading /etc/resolv.conf")
        } else {
            for server in configuration.servers {
                try check(ub_ctx_set_fwd(ctx, server.unboundForm), "forwarder \(server)")
            }
            // libunbound answers reserved names (RFC 6761: test, invalid, the documentation
            // networks' reverse zones, ...) itself; with explicit forwarders, ask them instead.
            for zone in Self.reservedZones {
                try check(ub_ctx_set_option(ctx, "local-zone:", "\(zone). transparent"), "local-zone \(zone)")
            }
        }
        if let anchor = configuration.trustAnchorFile {
            try check(ub_ctx_add_ta_file(ctx, anchor), "trust anchor \(anchor)")
        }
        var pipe: [Int32] = [0, 0]
        guard Glibc.pipe(&pipe) == 0 else {
            ub_ctx_delete(ctx)
            throw DNSError(.failure, "cannot create the resolver's wake pipe")
        }
        for fd in pipe {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        let timeout = configuration.timeout
        let ms = timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
        context = Context(ctx: ctx, timeoutMs: max(1, Int(ms)), wakeRead: pipe[0], wakeWrite: pipe[1])
        let context = self.context
        thread = Thread(name: "sluice-dns") { context.run() }
    }

    /// libunbound's default local zones other than localhost and loopback.
    static let reservedZones: [String] = {
        var zones = ["test", "invalid", "onion", "home.arpa", "10.in-addr.arpa", "168.192.in-addr.arpa", "0.in-addr.arpa",
                     "254.169.in-addr.arpa", "2.0.192.in-addr.arpa", "100.51.198.in-addr.arpa", "113.0.203.in-addr.arpa",
                     "255.255.255.255.in-addr.arpa", "d.f.ip6.arpa", "8.e.f.ip6.arpa", "9.e.f.ip6.arpa", "a.e.f.ip6.arpa",
                     "b.e.f.ip6.arpa", "8.b.d.0.1.0.0.2.ip6.arpa",
                     String(repeating: "0.", count: 32) + "ip6.arpa"]
        zones += (16...31).map { "\($0).172.in-addr.arpa" }
        zones += (64...127).map { "\($0).100.in-addr.arpa" }
        return zones
    }()

    deinit {
        context.stop()
        thread.join()
        context.close()
    }

    public func query(_ name: String, _ type: DNSRecordType) async throws -> DNSAnswer {
        if let cached = cachedAnswer(name, type) { return cached }
        return try await withCheckedThrowingContinuation { continuation in
            query(name, type) { continuation.resume(with: $0) }
        }
    }

    public func cachedAnswer(_ name: String, _ type: DNSRecordType) -> DNSAnswer? {
        let key = AnswerCache.Key(name: name, type: type)
        return cache.state.withLock { $0.answer(for: key, now: Context.now()) }
    }

    /// Starts a query; `completion` runs once: at once on this thread for a cached answer,
    /// otherwise on the resolver's thread (keep it short).
    public func query(_ name: String, _ type: DNSRecordType, completion: @escaping @Sendable (Result<DNSAnswer, DNSError>) -> Void) {
        let key = AnswerCache.Key(name: name, type: type)
        if let cached = cache.state.withLock({ $0.answer(for: key, now: Context.now()) }) {
            return completion(.success(cached))
        }
        let cache = self.cache
        context.submit(Request(name: name, type: type) { result in
            if case .success(let answer) = result {
                cache.state.withLock { $0.store(answer, for: key, now: Context.now()) }
            }
            completion(result)
        })
    }
}

private final class SharedAnswerCache: Sendable {
    let state = Mutex(AnswerCache())
}

/// Definite answers (records, NODATA, NXDOMAIN) by question, until their TTL runs out.
private struct AnswerCache {
    struct Key: Hashable {
        let name: String
        let type: DNSRecordType
        init(name: String, type: DNSRecordType) {
            self.name = (name.hasSuffix(".") ? String(name.dropLast()) : name).lowercased()
            self.type = type
        }
    }

    static let limit = 20_000
    /// An answer is kept at most this long whatever its TTL (milliseconds).
    static let maxTTL: UInt64 = 3_600_000

    private var entries: [Key: (answer: DNSAnswer, expires: UInt64)] = [:]

    func answer(for key: Key, now: UInt64) -> DNSAnswer? {
        guard let entry = entries[key], entry.expires > now else { return nil }
        var answer = entry.answer
        answer.ttl = Int((entry.expires - now + 999) / 1000)  // what is left of it
        return answer
    }

    mutating func store(_ answer: DNSAnswer, for key: Key, now: UInt64) {
        guard answer.isDefinite, answer.security != .bogus, answer.ttl > 0 else { return }
        if entries.count >= Self.limit {
            entries = entries.filter { $0.value.expires > now }
            if entries.count >= Self.limit { entries.removeAll(keepingCapacity: true) }
        }
        entries[key] = (answer, now + min(UInt64(answer.ttl) * 1000, Self.maxTTL))
    }
}

/// One query in flight.
private final class Request: Sendable {
    let name: String
    let type: DNSRecordType
    private let completion: Mutex<(@Sendable (Result<DNSAnswer, DNSError>) -> Void)?>
    let deadline = Mutex<UInt64>(0)
    let asyncID = Mutex<Int32>(0)

    init(name: String, type: DNSRecordType, completion: @escaping @Sendable (Result<DNSAnswer, DNSError>) -> Void) {
        self.name = name
        self.type = type
        self.completion = Mutex(completion)
    }

    var isDone: Bool { completion.withLock { $0 == nil } }

    /// Runs the completion the first time only.
    func complete(_ result: Result<DNSAnswer, DNSError>) {
        let body = completion.withLock { c -> (@Sendable (Result<DNSAnswer, DNSError>) -> Void)? in
            defer { c = nil }
            return c
        }
        body?(result)
    }
}

/// The libunbound context, the queries waiting for a deadline, and the loop.
///
/// `ctx` is used from any thread only through libunbound's thread-safe calls
/// (`ub_resolve_async`, `ub_cancel`); `ub_process` runs on the resolver thread alone.
/// `@unchecked`: the stored properties are immutable after init and libunbound locks its own state.
private final class Context: @unchecked Sendable {
    let ctx: OpaquePointer
    let timeoutMs: Int
    let wakeRead: Int32
    let wakeWrite: Int32
    /// Queries in submission order, hence deadline order (one timeout for all).
    private let waiting = Mutex<(queue: [Request], head: Int, stopping: Bool)>(([], 0, false))

    init(ctx: OpaquePointer, timeoutMs: Int, wakeRead: Int32, wakeWrite: Int32) {
        self.ctx = ctx
        self.timeoutMs = timeoutMs
        self.wakeRead = wakeRead
        self.wakeWrite = wakeWrite
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    func submit(_ request: Request) {
        if waiting.withLock({ $0.stopping }) {
            return request.complete(.failure(DNSError(.failure, "the resolver is shutting down")))
        }
        request.deadline.withLock { $0 = Self.now() + UInt64(timeoutMs) }
        let retained = Unmanaged.passRetained(request)
        var id: Int32 = 0
        let rc = ub_resolve_async(ctx, request.name, Int32(request.type.rawValue), 1, retained.toOpaque(), unboundCallback, &id)
        if rc != 0 {
            retained.release()
            let kind: DNSError.Kind = rc == UB_SYNTAX.rawValue ? .badName : .failure
            return request.complete(.failure(DNSError(kind, "\(request.name)/\(request.type): \(String(cString: ub_strerror(rc)))")))
        }
        request.asyncID.withLock { $0 = id }
        let wasEmpty = waiting.withLock { w -> Bool in
            let empty = w.head == w.queue.count
            w.queue.append(request)
            return empty
        }
        if wasEmpty { wake() }
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = Glibc.write(wakeWrite, &byte, 1)
    }

    func stop() {
        waiting.withLock { $0.stopping = true }
        wake()
    }

    func close() {
        ub_ctx_delete(ctx)
        Glibc.close(wakeRead)
        Glibc.close(wakeWrite)
    }

    /// The resolver thread: wait for answers or the next deadline, deliver, expire.
    func run() {
        let ubfd = ub_fd(ctx)
        var fds = [pollfd(fd: ubfd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        var drain = [UInt8](repeating: 0, count: 64)
        while true {
            let (stopping, next) = waiting.withLock { w -> (Bool, UInt64?) in
                (w.stopping, w.head < w.queue.count ? w.queue[w.head].deadline.withLock { $0 } : nil)
            }
            if stopping { break }
            let wait: Int32 = next.map { d in let n = Self.now(); return d > n ? Int32(min(d - n, 60_000)) : 0 } ?? -1
            fds[0].revents = 0
            fds[1].revents = 0
            _ = poll(&fds, 2, wait)
            if fds[1].revents != 0 { while Glibc.read(wakeRead, &drain, drain.count) > 0 {} }
            if fds[0].revents != 0 { _ = ub_process(ctx) }
            expire()
        }
        // Shutting down: everything still waiting fails now.
        let rest = waiting.withLock { w -> [Request] in
            defer { w.queue = []; w.head = 0 }
            return Array(w.queue[w.head...])
        }
        for request in rest where !request.isDone {
            if ub_cancel(ctx, request.asyncID.withLock { $0 }) == 0 { Unmanaged.passUnretained(request).release() }
            request.complete(.failure(DNSError(.failure, "the resolver is shutting down")))
        }
    }

    /// Drops answered queries from the front and times out overdue ones.
    private func expire() {
        let now = Self.now()
        var overdue: [Request] = []
        waiting.withLock { w in
            while w.head < w.queue.count {
                let r = w.queue[w.head]
                if r.isDone {
                    w.head += 1
                } else if r.deadline.withLock({ $0 }) <= now {
                    overdue.append(r)
                    w.head += 1
                } else {
                    break
                }
            }
            if w.head > 1024 && w.head * 2 > w.queue.count {
                w.queue.removeFirst(w.head)
                w.head = 0
            }
        }
        for request in overdue {
            // Cancelled in libunbound: its callback will not run, so its reference is ours to drop.
            if ub_cancel(ctx, request.asyncID.withLock { $0 }) == 0 { Unmanaged.passUnretained(request).release() }
            request.complete(.failure(DNSError(.timeout, "\(request.name)/\(request.type): no answer within \(timeoutMs) ms")))
        }
    }
}

/// libunbound's callback, on the resolver thread inside `ub_process`.
private let unboundCallback: ub_callback_type = { data, err, result in
    guard let data else { return }
    let request = Unmanaged<Request>.fromOpaque(data).takeRetainedValue()
    defer { if let result { ub_resolve_free(result) } }
    guard err == 0, let result else {
        request.complete(.failure(DNSError(.failure, "\(request.name)/\(request.type): \(String(cString: ub_strerror(err)))")))
        return
    }
    request.complete(.success(answer(result.pointee, request: request)))
}

private func answer(_ r: ub_result, request: Request) -> DNSAnswer {
    var records: [DNSRecord] = []
    if r.havedata != 0, let data = r.data, let lengths = r.len {
        var i = 0
        while let item = data[i] {
            let bytes = Array(UnsafeRawBufferPointer(start: item, count: Int(lengths[i])))
            if let record = RDataDecoder.record(request.type, bytes) { records.append(record) }
            i += 1
        }
    }
    var code = DNSAnswer.ResponseCode(Int(r.rcode))
    if r.nxdomain != 0 { code = .nameError }
    let security: DNSAnswer.Security = r.secure != 0 ? .secure : (r.bogus != 0 ? .bogus : .insecure)
    let canonical = r.canonname.map { String(cString: $0) }.map { $0.hasSuffix(".") ? String($0.dropLast()) : $0 }
    return DNSAnswer(
        name: request.name, type: request.type, responseCode: code, records: records, ttl: Int(r.ttl),
        security: security, canonicalName: canonical.flatMap { $0.caseInsensitiveCompare(request.name) ? nil : $0 }
    )
}

private extension String {
    func caseInsensitiveCompare(_ other: String) -> Bool {
        let a = hasSuffix(".") ? String(dropLast()) : self
        let b = other.hasSuffix(".") ? String(other.dropLast()) : other
        return a.lowercased() == b.lowercased()
    }
}

/// A plain POSIX thread running one closure (the resolver loop).
/// `@unchecked`: `handle` is written once in `init` and read only by `join`.
private final class Thread: @unchecked Sendable {
    private var handle = pthread_t()

    init(name: String, _ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body: body, name: name))
        pthread_create(&handle, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box.toOpaque())
    }

    func join() { pthread_join(handle, nil) }

    private final class Box: Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(body: @escaping @Sendable () -> Void, name: String) {
            self.body = body
            self.name = name
        }
    }
}
