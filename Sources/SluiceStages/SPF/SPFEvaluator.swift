import CSPF2
import Dispatch
import NIOPosix
import SluiceStageAPI
import Synchronization

/// Evaluates SPF (RFC 7208 `check_host()`) with libspf2, asking the gateway's resolver.
///
/// libspf2 walks the record (mechanisms, include, redirect, macros) on a thread of this
/// evaluator's pool, because its DNS interface is blocking. Its DNS layer is ours: every
/// query goes to the shared resolver (cache, timeouts, the tests' DNS server), and every
/// record it fetches is first read by `SPFRecord`'s strict grammar. That layer also enforces
/// what libspf2 does not: the 10-term and 2-void-lookup limits (4.6.4), the 10-name PTR and MX
/// limits, multiple records, duplicate modifiers, `/0` networks, and a deadline and query
/// budget per check so a hostile record costs a bounded amount.
public final class SPFEvaluator: Sendable {
    public struct Limits: Sendable, Hashable {
        /// Terms that cause DNS queries (include, a, mx, ptr, exists, redirect); RFC 7208 says 10.
        public var dnsTerms = 10
        /// Lookups returning no records or NXDOMAIN; RFC 7208 recommends 2.
        public var voidLookups = 2
        /// Every DNS query of one check, including address lookups for MX and PTR names.
        public var queries = 120
        /// Wall time of one check.
        public var time: Duration = .seconds(20)
        public init() {}
    }

    /// The explanation of a fail when the domain gives none (RFC 7208 6.2).
    public static let standardExplanation = "%{o} does not authorize %{c} to send its mail (SPF)"

    private let resolver: any DNSResolver
    private let receiver: String
    private let limits: Limits
    private let threadPool: NIOThreadPool
    private let defaultExplanation: String
    private let cache: SPFResultCache

    /// - Parameters:
    ///   - receiver: the receiving host's name (`%{r}`, Received-SPF `receiver=`).
    ///   - threads: concurrent checks; each blocks one pool thread while it waits for DNS.
    ///   - defaultExplanation: the explain-string (macros allowed) for a fail without `exp=`.
    ///   - cacheSize: results kept for repeated checks, each no longer than its DNS data's TTL; 0: none.
    public init(resolver: any DNSResolver, receiver: String, limits: Limits = Limits(), threads: Int = 16,
                defaultExplanation: String = SPFEvaluator.standardExplanation, cacheSize: Int = 10_000) {
        cache = SPFResultCache(capacity: cacheSize)
        self.resolver = resolver
        self.defaultExplanation = defaultExplanation
        self.receiver = receiver
        self.limits = limits
        threadPool = NIOThreadPool(numberOfThreads: threads)
        threadPool.start()
    }

    deinit {
        threadPool.shutdownGracefully { _ in }
    }

    /// Checks the MAIL FROM identity, or the HELO identity when `sender` is empty (RFC 7208 2.4).
    public func check(ip: IPAddress, sender: String, helo: String) async -> SPFOutcome {
        if sender.isEmpty { return await checkHELO(ip: ip, helo: helo) }
        let at = sender.lastIndex(of: "@")
        let domain = at.map { String(sender[sender.index(after: $0)...]) } ?? sender
        var localPart = at.map { String(sender[..<$0]) } ?? ""
        if localPart.isEmpty { localPart = "postmaster" }  // RFC 7208 4.3
        return await checkHost(ip: ip, domain: domain, sender: "\(localPart)@\(domain)", helo: helo, identity: .mailfrom)
    }

    /// Checks the HELO identity (RFC 7208 2.3): `postmaster@<helo>`.
    public func checkHELO(ip: IPAddress, helo: String) async -> SPFOutcome {
        await checkHost(ip: ip, domain: helo, sender: "postmaster@\(helo)", helo: helo, identity: .helo)
    }

    private func checkHost(ip: IPAddress, domain: String, sender: String, helo: String, identity: SPFIdentity) async -> SPFOutcome {
        var outcome = SPFOutcome(result: .none, identity: identity, domain: domain, sender: sender, clientIP: ip, helo: helo)
        // RFC 7208 4.3: a malformed or single-label domain gives "none" without a query.
        guard SPFDomain.isValid(domain) else {
            outcome.problem = "'\(domain)' is not a valid domain name"
            return outcome
        }
        let key = SPFResultCache.Key(identity: identity, ip: ip.bytes, domain: domain, sender: sender, helo: helo)
        do {
            let found: SPFCheck.Found
            if let cached = cache.found(for: key) {
                found = cached
            } else {
                // Built only on a miss: a cache hit costs no libspf2 request.
                let check = SPFCheck(resolver: resolver, receiver: receiver, limits: limits, ip: ip, sender: sender, helo: helo, domain: domain)
                check.defaultExplanation = defaultExplanation
                found = try await threadPool.runIfActive { check.run() }
                cache.store(found, ttl: check.dataTTL, for: key)
            }
            outcome.result = found.result
            outcome.explanation = found.explanation
            outcome.problem = found.problem
            outcome.queries = found.queries
        } catch {
            outcome.result = .temperror
            outcome.problem = "the SPF evaluator is shut down"
        }
        return outcome
    }
}

/// RFC 7208 4.3 domain checks.
enum SPFDomain {
    /// A name that can be asked at all: labels of 1 to 63 octets, 253 in all.
    static func isQueryable(_ domain: String) -> Bool {
        var name = Substring(domain)
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { !$0.isEmpty && $0.utf8.count <= 63 }
    }

    static func isValid(_ domain: String) -> Bool {
        var name = Substring(domain)
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.utf8.count <= 253, !name.hasPrefix("[") else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        return labels.count >= 2 && labels.allSatisfy { !$0.isEmpty && $0.utf8.count <= 63 }
    }
}

/// One `check_host()` run on a pool thread: libspf2 plus our DNS layer and limits.
///
/// `@unchecked Sendable`: a check is created on one task and then used only by the single pool
/// thread that runs it (libspf2 calls back synchronously on that thread).
final class SPFCheck: @unchecked Sendable {
    struct Found {
        var result: SPFResult
        var explanation: String?
        var problem: String?
        var queries: Int
    }

    /// How a fetched SPF record turned out.
    enum Fetched {
        case record(SPFRecord, text: String)
        case none(String)
        case permerror(String)
        case temperror(String)
    }

    let resolver: any DNSResolver
    let receiver: String
    let limits: SPFEvaluator.Limits
    let ip: IPAddress
    let sender: String
    let helo: String
    let domain: String
    let deadline: DispatchTime

    private(set) var queries = 0
    /// The shortest TTL of the answers the check read, in seconds; nil once a query failed.
    private(set) var dataTTL: Int? = .max
    /// `SLUICE_SPF_DEBUG=1` traces every query and record to stderr (for `sluice spf check`).
    static let debug = getenv("SLUICE_SPF_DEBUG") != nil
    func trace(_ s: @autoclosure () -> String) {
        if Self.debug {
            let line = Array("spf: \(s())\n".utf8)
            _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        }
    }
    private var dnsTerms = 0
    private var voidLookups = 0
    /// The first limit or error that ends the check, overriding what libspf2 reports.
    private var abort: (SPFResult, String)?
    /// Names returned by MX and PTR answers: their address lookups are part of that term.
    private var subsidiaryNames = Set<String>()
    /// Names from PTR answers: a DNS error validating one skips it (RFC 7208 5.5).
    private var ptrNames = Set<String>()
    /// Every record compiled, by its libspf2 address (the latest one at each address), with its
    /// domain: libspf2 says which record's `exp=` applies by pointing at it.
    private var compiled: [UnsafeRawPointer: (SPFRecord, String)] = [:]
    /// The domain whose record is being fetched or compiled.
    private var currentDomain = ""
    /// Names given to libspf2 in place of names it cannot parse (macro results with ":" or "/",
    /// empty labels) or that stand for "any address" (`a/0`, `mx/0`), by alias.
    private var aliases: [String: (name: String, zero: Bool)] = [:]
    /// The explanation text used when the domain gives none (RFC 7208 6.2).
    var defaultExplanation = SPFEvaluator.standardExplanation

    init(resolver: any DNSResolver, receiver: String, limits: SPFEvaluator.Limits, ip: IPAddress, sender: String, helo: String, domain: String) {
        self.resolver = resolver
        self.receiver = receiver
        self.limits = limits
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.domain = domain
        let c = limits.time.components
        deadline = .now() + .nanoseconds(Int(c.seconds) * 1_000_000_000 + Int(c.attoseconds / 1_000_000_000))
    }

    // MARK: running libspf2

    func run() -> Found {
        // The top-level record is fetched and checked here; include and redirect targets come
        // through the same path from libspf2 (`getSPFHook`).
        currentDomain = domain
        let top = fetchRecord(domain)
        switch top {
        case .none(let why): return Found(result: .none, problem: why, queries: queries)
        case .permerror(let why): return Found(result: .permerror, problem: why, queries: queries)
        case .temperror(let why): return Found(result: .temperror, problem: why, queries: queries)
        case .record: break
        }

        let layer = UnsafeMutablePointer<SPF_dns_server_t>.allocate(capacity: 1)
        layer.initialize(to: SPF_dns_server_t())
        let me = Unmanaged.passRetained(self)
        defer {
            me.release()
            layer.deinitialize(count: 1)
            layer.deallocate()
        }
        layer.pointee.lookup = lookupHook
        layer.pointee.get_spf = getSPFHook
        layer.pointee.hook = me.toOpaque()
        guard let server = SPF_server_new_dns(layer, 0) else {
            return Found(result: .temperror, problem: "libspf2: cannot create a server", queries: queries)
        }
        defer { SPF_server_free(server) }
        _ = SPF_server_set_rec_dom(server, receiver)
        var unused: UnsafeMutablePointer<SPF_response_t>?
        _ = SPF_server_set_explanation(server, "%{o}", &unused)
        if let unused { SPF_response_free(unused) }
        // Our layer enforces the RFC limits itself; libspf2's own checks would answer differently.
        _ = SPF_server_set_max_dns_mech(server, 1000)
        _ = SPF_server_set_max_dns_mx(server, 1000)
        _ = SPF_server_set_max_dns_ptr(server, 1000)

        guard let request = SPF_request_new(server) else {
            return Found(result: .temperror, problem: "libspf2: cannot create a request", queries: queries)
        }
        defer { SPF_request_free(request) }
        if ip.isIPv4 {
            var addr = in_addr()
            withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: ip.bytes) }
            _ = SPF_request_set_ipv4(request, addr)
        } else {
            var addr = in6_addr()
            withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: ip.bytes) }
            _ = SPF_request_set_ipv6(request, addr)
        }
        _ = SPF_request_set_env_from(request, sender)
        if !helo.isEmpty { _ = SPF_request_set_helo_dom(request, helo) }

        guard let response = SPF_response_new(request) else {
            return Found(result: .temperror, problem: "libspf2: cannot create a response", queries: queries)
        }
        defer { SPF_response_free(response) }

        return domain.withCString { cur -> Found in
            request.pointee.cur_dom = cur
            defer { request.pointee.cur_dom = nil }
            var record: UnsafeMutablePointer<SPF_record_t>?
            let err = compile(top, server: server, response: response, into: &record)
            guard err == SPF_E_SUCCESS, let record else {
                return Found(result: .permerror, problem: "libspf2 rejected the record of \(domain)", queries: queries)
            }
            defer { SPF_record_free(record) }
            response.pointee.spf_record_exp = record
            _ = SPF_record_interpret(record, request, response, 0)
            return finish(response)
        }
    }

    private func finish(_ response: UnsafeMutablePointer<SPF_response_t>) -> Found {
        if let (result, why) = abort { return Found(result: result, problem: why, queries: queries) }
        let result: SPFResult
        switch response.pointee.result {
        case SPF_RESULT_PASS: result = .pass
        case SPF_RESULT_FAIL: result = .fail
        case SPF_RESULT_SOFTFAIL: result = .softfail
        case SPF_RESULT_NEUTRAL: result = .neutral
        case SPF_RESULT_NONE: result = .none
        case SPF_RESULT_TEMPERROR: result = .temperror
        default: result = .permerror
        }
        var found = Found(result: result, queries: queries)
        if result == .permerror || result == .temperror {
            found.problem = String(cString: SPF_strerror(response.pointee.err))
        }
        if result == .fail {
            let target = response.pointee.spf_record_exp.flatMap { compiled[UnsafeRawPointer($0)] }
            found.explanation = explanation(record: target?.0, domain: target?.1 ?? domain)
        }
        return found
    }

    /// Compiles a checked record with libspf2, rewriting what it cannot parse into equivalents.
    fileprivate func compile(
        _ fetched: Fetched, server: UnsafeMutablePointer<SPF_server_t>, response: UnsafeMutablePointer<SPF_response_t>,
        into record: inout UnsafeMutablePointer<SPF_record_t>?
    ) -> SPF_errcode_t {
        guard case .record(let parsed, _) = fetched else { return SPF_E_NOT_SPF }
        let text = render(parsed, domain: currentDomain)
        let err = SPF_record_compile(server, response, &record, text)
        trace("compile '\(text)' -> \(err.rawValue)")
        if let record { compiled[UnsafeRawPointer(record)] = (parsed, currentDomain) }
        return err
    }

    // MARK: records for libspf2

    /// A checked record rendered back into text libspf2 compiles and evaluates the same way:
    /// domain-specs expanded here (libspf2's macro expansion is unreliable), awkward names
    /// aliased, CIDR lengths of the other address family dropped, `/0` networks split,
    /// unknown modifiers and `exp=` (explained here) left out.
    func render(_ record: SPFRecord, domain: String) -> String {
        let v4 = ip.isIPv4
        var terms = ["v=spf1"]
        func host(_ spec: SPFMacroString?, zero: Bool = false) -> String {
            var name = spec.map { SPFDomain.truncated($0.expand(macroValues(domain: domain))) } ?? domain
            if name.hasSuffix(".") && name.count > 1 { name.removeLast() }
            let plain = name.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x2E || c == 0x5F
            }
            return !zero && plain && SPFDomain.isQueryable(name) ? name : makeAlias(name, zero: zero)
        }
        for d in record.directives {
            let q = d.qualifier == .pass ? "" : String(d.qualifier.rawValue)
            switch d.mechanism {
            case .all:
                terms.append("\(q)all")
            case .include(let spec):
                terms.append("\(q)include:\(host(spec))")
            case .exists(let spec):
                terms.append("\(q)exists:\(host(spec))")
            case .ptr(let spec):
                terms.append("\(q)ptr:\(host(spec))")
            case .a(let spec, let c4, let c6), .mx(let spec, let c4, let c6):
                let name: String
                if case .a = d.mechanism { name = "a" } else { name = "mx" }
                let cidr = v4 ? c4 : c6
                if cidr == 0 {
                    terms.append("\(q)\(name):\(host(spec, zero: true))")
                } else {
                    terms.append("\(q)\(name):\(host(spec))" + (cidr.map { v4 ? "/\($0)" : "//\($0)" } ?? ""))
                }
            case .ip4(let network, let prefix):
                if prefix == 0 {
                    terms += ["\(q)ip4:0.0.0.0/1", "\(q)ip4:128.0.0.0/1"]
                } else {
                    terms.append("\(q)ip4:\(network)" + (prefix.map { "/\($0)" } ?? ""))
                }
            case .ip6(let network, let prefix):
                if prefix == 0 {
                    terms += ["\(q)ip6:::/1", "\(q)ip6:8000::/1"]
                } else {
                    terms.append("\(q)ip6:\(network)" + (prefix.map { "/\($0)" } ?? ""))
                }
            }
        }
        if let r = record.redirect { terms.append("redirect=\(host(r))") }
        return terms.joined(separator: " ")
    }

    /// A stand-in name libspf2 can parse; the DNS layer translates it back.
    func makeAlias(_ name: String, zero: Bool) -> String {
        let alias = "a\(aliases.count).alias.sluice.invalid"
        aliases[alias] = (name, zero)
        return alias
    }

    // MARK: the DNS layer

    /// A blocking query through the gateway's resolver, within the check's deadline.
    func resolve(_ name: String, _ type: DNSRecordType) -> Result<DNSAnswer, DNSError> {
        queries += 1
        if queries > limits.queries {
            return .failure(DNSError(.failure, "more than \(limits.queries) DNS queries"))
        }
        let box = Mutex<Result<DNSAnswer, DNSError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        resolver.query(name, type) { result in
            box.withLock { $0 = result }
            done.signal()
        }
        if done.wait(timeout: deadline) == .timedOut {
            return .failure(DNSError(.timeout, "the SPF check ran out of time"))
        }
        let result = box.withLock { $0! }
        switch result {
        case .success(let answer): dataTTL = dataTTL.map { min($0, answer.ttl) }
        case .failure: dataTTL = nil
        }
        trace("query \(name)/\(type) -> \((try? result.get()).map { "\($0.responseCode) \($0.records)" } ?? "\(result)")")
        return result
    }

    /// Fetches and checks the SPF record of `name` (RFC 7208 4.4, 4.5, 4.6).
    func fetchRecord(_ name: String) -> Fetched {
        guard SPFDomain.isValid(name) else { return .none("'\(name)' is not a valid domain name") }
        switch resolve(name, .txt) {
        case .failure(let e):
            return .temperror("DNS: \(e.message)")
        case .success(let answer):
            guard answer.isDefinite else { return .temperror("DNS: \(answer.responseCode) for \(name)/TXT") }
            let texts = answer.records.compactMap(\.text).filter(SPFRecord.isSPF1)
            if texts.isEmpty { return .none("no SPF record at \(name)") }
            if texts.count > 1 { return .permerror("\(texts.count) SPF records at \(name)") }
            do {
                return .record(try SPFRecord(texts[0]), text: texts[0])
            } catch {
                return .permerror("\(name): \(error.message)")
            }
        }
    }

    /// libspf2 asks for the record of an include or redirect target.
    fileprivate func getSPF(
        server: UnsafeMutablePointer<SPF_server_t>, request: UnsafeMutablePointer<SPF_request_t>,
        response: UnsafeMutablePointer<SPF_response_t>, record: UnsafeMutablePointer<UnsafeMutablePointer<SPF_record_t>?>
    ) -> SPF_errcode_t {
        if abort != nil { return SPF_E_DNS_ERROR }
        guard let cur = request.pointee.cur_dom else { return SPF_E_NOT_CONFIG }
        let name = aliases[String(cString: cur).lowercased()]?.name ?? String(cString: cur)
        currentDomain = name
        if !countTerm() { return SPF_E_DNS_ERROR }
        let fetched = fetchRecord(name)
        switch fetched {
        case .record:
            var compiled: UnsafeMutablePointer<SPF_record_t>?
            let err = compile(fetched, server: server, response: response, into: &compiled)
            record.pointee = compiled
            return err == SPF_E_SUCCESS ? SPF_E_SUCCESS : SPF_E_SYNTAX
        case .none:
            return SPF_E_NOT_SPF  // libspf2 makes include/redirect of "none" a permerror
        case .permerror(let why):
            abort = (.permerror, why)
            return SPF_E_SYNTAX
        case .temperror:
            return SPF_E_DNS_ERROR
        }
    }

    /// Counts a DNS-querying term; false (and an abort) past the limit.
    private func countTerm() -> Bool {
        dnsTerms += 1
        if dnsTerms > limits.dnsTerms {
            if abort == nil { abort = (.permerror, "more than \(limits.dnsTerms) DNS-querying terms") }
            return false
        }
        return true
    }

    /// libspf2 asks for records of one type.
    fileprivate func lookup(server: UnsafeMutablePointer<SPF_dns_server_t>, name asked: String, type: ns_type) -> UnsafeMutablePointer<SPF_dns_rr_t>? {
        let rrType = DNSRecordType(rawValue: UInt16(type.rawValue))
        func reply(_ herrno: Int32, _ records: [DNSRecord] = [], ttl: Int = 0) -> UnsafeMutablePointer<SPF_dns_rr_t>? {
            LibSPF2RR.make(server: server, name: asked, type: type, herrno: herrno, records: records, ttl: ttl)
        }
        let alias = aliases[asked.lowercased()]
        let name = alias?.name ?? asked
        if abort != nil { return reply(TRY_AGAIN) }
        // TXT here is libspf2 fetching an explanation: ours is computed afterwards (`explanation`).
        if rrType == .txt { return reply(NO_DATA) }
        let isTerm: Bool
        switch rrType {
        case .mx, .ptr: isTerm = true
        case .a, .aaaa: isTerm = !subsidiaryNames.contains(asked.lowercased())
        default: isTerm = false  // TXT here is an explanation lookup
        }
        if isTerm && !countTerm() { return reply(TRY_AGAIN) }
        // A name no DNS server could hold (an empty or long label, RFC 1035 2.3.4) does not exist.
        if !SPFDomain.isQueryable(name) {
            trace("not queryable: \(name)")
            if isTerm { voidLookups += 1 }
            if voidLookups > limits.voidLookups {
                abort = (.permerror, "more than \(limits.voidLookups) void DNS lookups")
                return reply(TRY_AGAIN)
            }
            return reply(HOST_NOT_FOUND)
        }
        let answer: DNSAnswer
        let skipOnError = !isTerm && ptrNames.contains(asked.lowercased())
        switch resolve(name, rrType) {
        case .failure(let e):
            if abort == nil, e.message.hasPrefix("more than") { abort = (.permerror, e.message) }
            return reply(skipOnError && abort == nil ? HOST_NOT_FOUND : TRY_AGAIN)
        case .success(let a):
            answer = a
        }
        guard answer.isDefinite else { return reply(skipOnError ? HOST_NOT_FOUND : TRY_AGAIN) }
        var records = answer.records
        if isTerm && records.isEmpty {
            voidLookups += 1
            if voidLookups > limits.voidLookups {
                abort = (.permerror, "more than \(limits.voidLookups) void DNS lookups")
                return reply(TRY_AGAIN)
            }
        }
        switch rrType {
        case .mx:
            if records.count > 10 {
                abort = (.permerror, "\(name) has more than 10 MX records")
                return reply(TRY_AGAIN)
            }
            if alias?.zero == true {
                // mx/0: each exchange stands for "any address", through a zero alias of its own.
                records = records.map { record in
                    guard case .mx(let preference, let exchange) = record else { return record }
                    return .mx(preference: preference, exchange: makeAlias(exchange, zero: true))
                }
            }
            for case .mx(_, let exchange) in records { subsidiaryNames.insert(exchange.lowercased()) }
        case .ptr:
            records = Array(records.prefix(10))  // RFC 7208 4.6.4: the rest are ignored
            for case .ptr(let n) in records {
                subsidiaryNames.insert(n.lowercased())
                ptrNames.insert(n.lowercased())
            }
        default:
            break
        }
        if answer.isNameError { return reply(HOST_NOT_FOUND) }
        if records.isEmpty { return reply(NO_DATA) }
        if alias?.zero == true, rrType == .a || rrType == .aaaa {
            // a/0, mx/0: any address of the client's family matches, so answer with the client's.
            records = [rrType == .a ? .a(ip) : .aaaa(ip)]
        }
        return reply(NETDB_SUCCESS, records, ttl: answer.ttl)
    }
}

// MARK: C callbacks

private func check(of server: UnsafeMutablePointer<SPF_dns_server_t>?) -> SPFCheck? {
    guard let hook = server?.pointee.hook else { return nil }
    return Unmanaged<SPFCheck>.fromOpaque(hook).takeUnretainedValue()
}

private let lookupHook: SPF_dns_lookup_t = { server, domain, type, _ in
    guard let server, let domain, let check = check(of: server) else { return nil }
    return check.lookup(server: server, name: String(cString: domain), type: type)
}

private let getSPFHook: SPF_dns_get_spf_t = { server, request, response, record in
    guard let server, let request, let response, let record, let check = check(of: server.pointee.resolver) else {
        return SPF_E_NOT_CONFIG
    }
    return check.getSPF(server: server, request: request, response: response, record: record)
}

/// libspf2's answer structure, filled from ours.
enum LibSPF2RR {
    static func make(
        server: UnsafeMutablePointer<SPF_dns_server_t>, name: String, type: ns_type, herrno: Int32, records: [DNSRecord], ttl: Int
    ) -> UnsafeMutablePointer<SPF_dns_rr_t>? {
        guard let rr = SPF_dns_rr_new_init(server, name, type, Int32(clamping: ttl), herrno) else { return nil }
        var n: Int32 = 0
        for record in records {
            let bytes: [UInt8]
            switch record {
            case .a(let ip) where type == ns_t_a: bytes = ip.bytes
            case .aaaa(let ip) where type == ns_t_aaaa: bytes = ip.bytes
            case .mx(_, let exchange) where type == ns_t_mx: bytes = Array(exchange.utf8) + [0]
            case .ptr(let target) where type == ns_t_ptr: bytes = Array(target.utf8) + [0]
            case .txt(let strings) where type == ns_t_txt: bytes = Array(strings.joined()) + [0]
            default: continue
            }
            guard SPF_dns_rr_buf_realloc(rr, n, bytes.count) == SPF_E_SUCCESS, let slot = rr.pointee.rr[Int(n)] else { break }
            UnsafeMutableRawPointer(slot).copyMemory(from: bytes, byteCount: bytes.count)
            n += 1
        }
        rr.pointee.num_rr = n
        return rr
    }
}

