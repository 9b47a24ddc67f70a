import CMilter
import Foundation
import SluiceStageAPI
import Synchronization

/// The C functions libmilter calls (`struct smfiDesc`), on its own thread per MTA connection.
/// Each finds the connection's `MilterServerSession` (made at negotiation, kept with
/// `smfi_setpriv`, released at close), hands it plain Swift values, and turns its answer into an
/// SMFIS_* status and `smfi_*` calls.
enum MilterCallbacks {
    /// The running server's shared state; libmilter's callbacks are C functions and capture nothing.
    static let context = Mutex<MilterServerContext?>(nil)

    /// Macros asked for at each step (`smfi_setsymlist`), where the MTA lets us choose: what
    /// `SessionInfo`, `TransactionInfo` and the log need.
    static let macros: [(step: Int32, names: [String])] = [
        (SMFIM_CONNECT, ["j", "{daemon_addr}", "{daemon_port}", "{client_addr}", "{client_port}"]),
        (SMFIM_HELO, ["{tls_version}", "{cipher}", "{cipher_bits}"]),
        (SMFIM_ENVFROM, ["i", "{auth_type}", "{auth_authen}"]),
        (SMFIM_ENVRCPT, ["i"]),
        (SMFIM_EOM, ["i"]),
    ]

    static var description: smfiDesc {
        smfiDesc(
            xxfi_name: strdup("sluice"),
            xxfi_version: SMFI_VERSION,
            xxfi_flags: MilterActions.all.rawValue,
            xxfi_connect: { ctx, host, address in MilterCallbacks.connect(ctx, host, address) },
            xxfi_helo: { ctx, name in MilterCallbacks.helo(ctx, name) },
            xxfi_envfrom: { ctx, argv in MilterCallbacks.envelope(ctx, argv, recipient: false) },
            xxfi_envrcpt: { ctx, argv in MilterCallbacks.envelope(ctx, argv, recipient: true) },
            xxfi_header: { ctx, name, value in MilterCallbacks.header(ctx, name, value) },
            xxfi_eoh: { ctx in MilterCallbacks.endOfHeaders(ctx) },
            xxfi_body: { ctx, bytes, count in MilterCallbacks.body(ctx, bytes, count) },
            xxfi_eom: { ctx in MilterCallbacks.endOfMessage(ctx) },
            xxfi_abort: { ctx in MilterCallbacks.abort(ctx) },
            xxfi_close: { ctx in MilterCallbacks.close(ctx) },
            xxfi_unknown: nil,
            xxfi_data: nil,
            xxfi_negotiate: { ctx, f0, f1, _, _, pf0, pf1, pf2, pf3 in
                MilterCallbacks.negotiate(ctx, actions: f0, steps: f1, pf0, pf1, pf2, pf3)
            }
        )
    }

    // MARK: Per-connection object

    /// The connection's session, made on first use (negotiation, or connect for an MTA that
    /// skips it).
    private static func session(_ ctx: OpaquePointer?) -> (LibmilterContext, MilterServerSession)? {
        guard let ctx else { return nil }
        let c = LibmilterContext(pointer: ctx)
        if let p = c.privateData { return (c, Unmanaged<MilterServerSession>.fromOpaque(p).takeUnretainedValue()) }
        guard let shared = context.withLock({ $0 }) else { return nil }
        let s = MilterServerSession(context: shared)
        c.privateData = Unmanaged.passRetained(s).toOpaque()
        return (c, s)
    }

    private static func status(_ response: MilterResponse, _ c: LibmilterContext) -> sfsistat {
        switch response {
        case .continue: return SMFIS_CONTINUE
        case .discard: return SMFIS_DISCARD
        case .refuse(let reply):
            c.setReply(reply)
            return reply.code >= 500 ? SMFIS_REJECT : SMFIS_TEMPFAIL
        }
    }

    /// Without the server (it is stopping) nothing is checked: the MTA's `milter_default_action` is
    /// for a milter that is down, and a tempfail says so.
    private static let unavailable = SMFIS_TEMPFAIL

    // MARK: Callbacks

    static func negotiate(
        _ ctx: OpaquePointer?, actions: UInt, steps: UInt,
        _ pf0: UnsafeMutablePointer<UInt>?, _ pf1: UnsafeMutablePointer<UInt>?,
        _ pf2: UnsafeMutablePointer<UInt>?, _ pf3: UnsafeMutablePointer<UInt>?
    ) -> sfsistat {
        guard let (c, s) = session(ctx) else { return unavailable }
        let granted = MilterActions.all.intersection(MilterActions(rawValue: actions))
        s.granted = granted
        // Every event is wanted, with a reply; header values with their leading space, so that a
        // field is known as it was written.
        var wanted: UInt = 0
        for flag in [SMFIP_HDR_LEADSPC, SMFIP_NODATA, SMFIP_NOUNKNOWN].map(UInt.init) where steps & flag != 0 {
            wanted |= flag
        }
        s.leadingSpace = wanted & UInt(SMFIP_HDR_LEADSPC) != 0
        pf0?.pointee = granted.rawValue
        pf1?.pointee = wanted
        pf2?.pointee = 0
        pf3?.pointee = 0
        if granted.contains(.setSymbolList) {
            for (step, names) in macros { c.requestMacros(names, at: step) }
        }
        return SMFIS_CONTINUE
    }

    static func connect(_ ctx: OpaquePointer?, _ host: UnsafeMutablePointer<CChar>?, _ address: UnsafeMutablePointer<sockaddr>?) -> sfsistat {
        guard let (c, s) = session(ctx) else { return unavailable }
        let response = s.connect(clientName: host.map { String(cString: $0) }, address: socketAddress(address), macros: c.symbol)
        return status(response, c)
    }

    static func helo(_ ctx: OpaquePointer?, _ name: UnsafeMutablePointer<CChar>?) -> sfsistat {
        guard let (c, s) = session(ctx) else { return unavailable }
        return status(s.helo(name.map { String(cString: $0) } ?? "", macros: c.symbol), c)
    }

    static func envelope(_ ctx: OpaquePointer?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, recipient: Bool) -> sfsistat {
        guard let (c, s) = session(ctx) else { return unavailable }
        var arguments: [String] = []
        if var p = argv {
            while let arg = p.pointee {
                arguments.append(String(cString: arg))
                p += 1
            }
        }
        return status(recipient ? s.rcptTo(arguments, macros: c.symbol) : s.mailFrom(arguments, macros: c.symbol), c)
    }

    static func header(_ ctx: OpaquePointer?, _ name: UnsafeMutablePointer<CChar>?, _ value: UnsafeMutablePointer<CChar>?) -> sfsistat {
        guard let (c, s) = session(ctx) else { return unavailable }
        return status(s.header(name: name.map { String(cString: $0) } ?? "", value: value.map { String(cString: $0) } ?? ""), c)
    }

    static func endOfHeaders(_ ctx: OpaquePointer?) -> sfsistat {
        guard let (c, s) = session(ctx) else { return unavailable }
        return status(s.endOfHeaders(), c)
    }

    static func body(_ ctx: OpaquePointer?, _ bytes: UnsafeMutablePointer<UInt8>?, _ count: Int) -> sfsistat {
        guard let (c, s) = session(ctx) else { return unavailable }
        return status(s.body(UnsafeRawBufferPointer(start: bytes, count: bytes == nil ? 0 : count)), c)
    }

    static func endOfMessage(_ ctx: OpaquePointer?) -> sfsistat {
        guard let (c, s) = session(ctx) else { return unavailable }
        let response = s.endOfMessage(macros: c.symbol) { outcome in
            do {
                for operation in outcome.operations {
                    guard s.granted.contains(operation.action) || operation.isPlainRecipient(s.granted) else {
                        throw MilterEditError(operation: operation.description, why: "the MTA did not allow it in negotiation")
                    }
                    try c.perform(operation, leadingSpace: s.leadingSpace, granted: s.granted)
                }
                if let reason = outcome.quarantine, !c.quarantine(reason) {
                    throw MilterEditError(operation: "quarantine", why: "the MTA refused it")
                }
                return nil
            } catch {
                return error as? MilterEditError
            }
        }
        return status(response, c)
    }

    static func abort(_ ctx: OpaquePointer?) -> sfsistat {
        guard let (_, s) = session(ctx) else { return SMFIS_CONTINUE }
        s.abort()
        return SMFIS_CONTINUE
    }

    static func close(_ ctx: OpaquePointer?) -> sfsistat {
        guard let ctx else { return SMFIS_CONTINUE }
        let c = LibmilterContext(pointer: ctx)
        guard let p = c.privateData else { return SMFIS_CONTINUE }
        c.privateData = nil
        let s = Unmanaged<MilterServerSession>.fromOpaque(p).takeRetainedValue()
        s.close()
        return SMFIS_CONTINUE
    }

    // MARK: Client address

    /// The client's address and port from `xxfi_connect`; nil unless IPv4 or IPv6. An
    /// IPv4-mapped IPv6 address is given as IPv4, as the gateway's rules see it.
    static func socketAddress(_ address: UnsafeMutablePointer<sockaddr>?) -> (String, Int)? {
        guard let address else { return nil }
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            return address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                var a = sin.pointee.sin_addr
                let bytes = withUnsafeBytes(of: &a) { Array($0) }
                return IPAddress(bytes: bytes).map { ($0.description, Int(UInt16(bigEndian: sin.pointee.sin_port))) }
            }
        case AF_INET6:
            return address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                var a = sin6.pointee.sin6_addr
                let bytes = withUnsafeBytes(of: &a) { Array($0) }
                guard let ip = IPAddress(bytes: bytes)?.unmapped else { return nil }
                return (ip.description, Int(UInt16(bigEndian: sin6.pointee.sin6_port)))
            }
        default:
            return nil
        }
    }
}

extension MilterOperation {
    /// A recipient with parameters can still go in through plain `smfi_addrcpt`.
    fileprivate func isPlainRecipient(_ granted: MilterActions) -> Bool {
        if case .addRecipient = self { return granted.contains(.addRecipients) }
        return false
    }
}
