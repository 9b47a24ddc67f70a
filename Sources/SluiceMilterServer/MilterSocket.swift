import SluiceStageAPI

/// Where `sluice milter` listens, written as libmilter writes it (`smfi_setconn`):
/// `inet:PORT@HOST`, `inet6:PORT@HOST`, `inet:PORT` (every address), `unix:/path` or
/// `local:/path`. Postfix's way of naming the same socket (`inet:HOST:PORT`,
/// `inet6:[HOST]:PORT`) is read too, so the value of `smtpd_milters` can be pasted.
public enum MilterSocket: Hashable, Sendable, CustomStringConvertible {
    /// IPv4; `host` nil listens on every address.
    case inet(port: Int, host: String?)
    /// IPv6; `host` nil listens on every address.
    case inet6(port: Int, host: String?)
    case unix(path: String)

    /// A socket text that is not one of the forms above, with what is wrong.
    public struct SyntaxError: Error, Hashable, Sendable, CustomStringConvertible {
        public var description: String
    }

    public init(parsing text: String) throws(SyntaxError) {
        func fail(_ why: String) -> SyntaxError {
            SyntaxError(description: "'\(text)' is not a milter socket: \(why) (use inet:PORT@HOST, inet6:PORT@HOST or unix:/path)")
        }
        guard !text.isEmpty, !text.contains(where: { $0.isWhitespace || $0 == "\0" }) else { throw fail("empty or contains white space") }
        let colon = text.firstIndex(of: ":")
        let scheme = colon.map { text[..<$0].lowercased() } ?? ""
        let rest = colon.map { String(text[text.index(after: $0)...]) } ?? text
        switch scheme {
        case "unix", "local":
            guard !rest.isEmpty else { throw fail("no path") }
            self = .unix(path: rest)
        case "inet", "inet6":
            let (port, host) = try Self.portAndHost(rest, fail: fail)
            // An address literal decides the family (libmilter reads IPv6 only after inet6:).
            let v6 = host.flatMap(IPAddress.init).map { !$0.isIPv4 } ?? (scheme == "inet6")
            self = v6 ? .inet6(port: port, host: host) : .inet(port: port, host: host)
        case "" where text.hasPrefix("/"):
            self = .unix(path: text)
        default:
            throw fail("unknown kind '\(scheme)'")
        }
    }

    /// `PORT@HOST` (libmilter), `PORT`, or `HOST:PORT` / `[HOST]:PORT` (Postfix).
    private static func portAndHost(
        _ rest: String, fail: (String) -> SyntaxError
    ) throws(SyntaxError) -> (Int, String?) {
        let portText: Substring
        var host: Substring?
        if let at = rest.firstIndex(of: "@") {
            portText = rest[..<at]
            host = rest[rest.index(after: at)...]
        } else if rest.allSatisfy(\.isASCIIDigit) {
            portText = Substring(rest)
        } else if rest.hasPrefix("["), let close = rest.firstIndex(of: "]"), rest[close...].hasPrefix("]:") {
            host = rest[rest.index(after: rest.startIndex)..<close]
            portText = rest[rest.index(close, offsetBy: 2)...]
        } else if let last = rest.lastIndex(of: ":") {
            host = rest[..<last]
            portText = rest[rest.index(after: last)...]
        } else {
            throw fail("no port")
        }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), let port = Int(portText), (1...65535).contains(port) else {
            throw fail("the port must be a number from 1 to 65535")
        }
        guard var name = host else { return (port, nil) }
        if name.hasPrefix("[") && name.hasSuffix("]") { name = name.dropFirst().dropLast() }
        guard !name.isEmpty else { throw fail("no host after the port") }
        guard IPAddress(String(name)) != nil || name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-") }) else {
            throw fail("'\(name)' is neither an IP address nor a host name")
        }
        return (port, String(name))
    }

    /// The text libmilter's `smfi_setconn` takes.
    public var description: String {
        switch self {
        case .inet(let port, let host): "inet:\(port)" + (host.map { "@\($0)" } ?? "")
        case .inet6(let port, let host): "inet6:\(port)" + (host.map { "@\($0)" } ?? "")
        case .unix(let path): "unix:\(path)"
        }
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
