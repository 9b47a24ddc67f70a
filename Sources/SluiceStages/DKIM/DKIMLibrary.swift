import COpenDKIM
#if canImport(Glibc)
import Glibc
#endif
import SluiceStageAPI
import Synchronization

/// One libopendkim library handle per stage, with the key-lookup callback wired to keys the
/// Swift side resolved beforehand (`DKIMKeys`), so libopendkim never does DNS itself.
///
/// `@unchecked Sendable`: the handle is created once; libopendkim is made for concurrent
/// per-message handles on one library handle (opendkim runs it from many milter threads).
final class DKIMLibrary: @unchecked Sendable {
    let handle: OpaquePointer

    init(signedHeaders: [String]? = nil, oversignedHeaders: [String]? = nil) throws {
        guard let lib = dkim_init(nil, nil) else { throw DKIMError("libopendkim: dkim_init failed") }
        handle = lib
        _ = dkim_set_key_lookup(lib, keyLookup)
        // Keys are looked up at dkim_eom, after the Swift side has resolved them while the
        // body streamed; without this flag dkim_eoh would already ask for them.
        var flags = UInt32(DKIM_LIBFLAGS_DELAYSIGPROC)
        _ = dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, MemoryLayout<UInt32>.size)
        if let signedHeaders { try setList(DKIM_OPTS_SIGNHDRS, signedHeaders) }
        if let oversignedHeaders { try setList(DKIM_OPTS_OVERSIGNHDRS, oversignedHeaders) }
    }

    deinit { dkim_close(handle) }

    /// Sets a NULL-terminated list option. libopendkim copies the list.
    private func setList(_ option: Int32, _ names: [String]) throws {
        let strings = names.map { strdup($0) }
        defer { strings.forEach { free($0) } }
        var pointers: [UnsafeMutablePointer<CChar>?] = strings + [nil]
        // The option takes the `char **` itself, with the size of a pointer.
        let status = pointers.withUnsafeMutableBufferPointer { list in
            dkim_options(handle, DKIM_OP_SETOPT, option, UnsafeMutableRawPointer(list.baseAddress), MemoryLayout<UnsafeMutablePointer<CChar>?>.size)
        }
        guard status == DKIM_STAT_OK else { throw DKIMError("libopendkim: cannot set header list (\(status))") }
    }
}

/// A DKIM failure outside a signature's verdict (the library, a key file).
struct DKIMError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The key records for one message, resolved before libopendkim asks for them.
final class DKIMKeys: Sendable {
    enum Answer: Sendable {
        case record(String)
        case notFound
        case error
    }

    private let answers = Mutex<[String: Answer]>([:])

    func set(_ name: String, _ answer: Answer) { answers.withLock { $0[name.lowercased()] = answer } }
    func answer(_ name: String) -> Answer? { answers.withLock { $0[name.lowercased()] } }

    /// Resolves `selector._domainkey.domain` TXT; the first record that looks like a key.
    static func fetch(_ name: String, resolver: any DNSResolver) async -> Answer {
        do {
            return answer(from: try await resolver.query(name, .txt))
        } catch {
            return .error
        }
    }

    /// What a TXT answer says about a key.
    static func answer(from dns: DNSAnswer) -> Answer {
        guard dns.isDefinite else { return .error }
        if let key = dns.records.lazy.compactMap(\.text).first(where: { $0.contains("p=") }) { return .record(key) }
        return .notFound
    }
}

/// libopendkim asks for a signature's key: answered from the message's `DKIMKeys`.
private let keyLookup: @convention(c) (OpaquePointer?, OpaquePointer?, UnsafeMutablePointer<UInt8>?, Int) -> DKIM_CBSTAT = { dkim, sig, buf, buflen in
    guard let dkim, let sig, let buf, buflen > 0, let context = dkim_get_user_context(dkim) else { return DKIM_CBSTAT_ERROR }
    let keys = Unmanaged<DKIMKeys>.fromOpaque(context).takeUnretainedValue()
    guard let selector = dkim_sig_getselector(sig), let domain = dkim_sig_getdomain(sig) else { return DKIM_CBSTAT_NOTFOUND }
    let name = "\(String(cString: selector))._domainkey.\(String(cString: domain))"
    switch keys.answer(name) {
    case .record(let text):
        let bytes = Array(text.utf8.prefix(buflen - 1))
        bytes.withUnsafeBufferPointer { buf.update(from: $0.baseAddress!, count: bytes.count) }
        buf[bytes.count] = 0
        return DKIM_CBSTAT_CONTINUE
    case .notFound:
        return DKIM_CBSTAT_NOTFOUND
    case .error, nil:
        return DKIM_CBSTAT_TRYAGAIN
    }
}
