/// One address in an address header field (From, Sender, Reply-To, To, Cc; RFC 5322 3.4).
public struct HeaderAddress: Hashable, Sendable, CustomStringConvertible {
    /// The phrase before `<...>`, unquoted; nil when there is none.
    public var displayName: String?
    /// The local part with quoting removed.
    public var localPart: String
    /// The domain as written (a domain literal keeps its brackets).
    public var domain: String
    /// The display name of the group the address belongs to, if any.
    public var group: String?

    public init(displayName: String? = nil, localPart: String, domain: String, group: String? = nil) {
        self.displayName = displayName
        self.localPart = localPart
        self.domain = domain
        self.group = group
    }

    public var description: String { "\(localPart)@\(domain)" }

    /// Parses a field value (unfolded or not): `address-list`, `mailbox-list` and a lone
    /// `mailbox` alike, with the obsolete forms receivers meet (RFC 5322 4.4: routes, CFWS
    /// anywhere). Quoted strings (with quoted pairs), nested comments, groups (`name: a, b;`)
    /// and domain literals are understood; an element that is not an address (no `@`, nothing
    /// after it) is left out. Never fails: what cannot be read yields no address.
    public static func parseList(_ value: String) -> [HeaderAddress] {
        var parser = AddressListParser(tokens: AddressTokenizer.tokens(value))
        return parser.list()
    }
}

/// The lexical pieces of an address header (RFC 5322 3.2): comments are dropped here.
enum AddressToken: Equatable {
    /// An atom, or a run of atext and dots (`john.doe`, `example.org`).
    case atom(String)
    /// A quoted string's content, quoted pairs undone.
    case quoted(String)
    /// `[...]`, brackets included.
    case literal(String)
    /// One of `< > @ , ; : .` outside quotes.
    case special(Character)
}

enum AddressTokenizer {
    static func tokens(_ value: String) -> [AddressToken] {
        var out: [AddressToken] = []
        var chars = Array(value)[...]
        var atom = ""
        func endAtom() {
            if !atom.isEmpty { out.append(.atom(atom)) }
            atom = ""
        }
        while let c = chars.popFirst() {
            switch c {
            case "\"":
                endAtom()
                var text = ""
                while let q = chars.popFirst(), q != "\"" {
                    if q == "\\", let next = chars.popFirst() { text.append(next) } else if q != "\r" && q != "\n" { text.append(q) }
                }
                out.append(.quoted(text))
            case "(":
                endAtom()
                var depth = 1
                while depth > 0, let q = chars.popFirst() {
                    if q == "\\" { _ = chars.popFirst() } else if q == "(" { depth += 1 } else if q == ")" { depth -= 1 }
                }
            case "[":
                endAtom()
                var text = "["
                while let q = chars.popFirst() {
                    if q == "\\", let next = chars.popFirst() { text.append(next); continue }
                    if q == " " || q == "\t" || q == "\r" || q == "\n" { continue }
                    text.append(q)
                    if q == "]" { break }
                }
                out.append(.literal(text))
            case "<", ">", "@", ",", ";", ":":
                endAtom()
                out.append(.special(c))
            case ".":
                // Dots join atoms (dot-atom); a dot after a quoted string (obs-local-part) too.
                atom.append(c)
            case " ", "\t", "\r", "\n":
                endAtom()
            default:
                atom.append(c)
            }
        }
        endAtom()
        return out
    }
}

/// address-list over the tokens, tolerant of the obsolete and the broken.
struct AddressListParser {
    var tokens: [AddressToken]

    mutating func list() -> [HeaderAddress] {
        var result: [HeaderAddress] = []
        var element: [AddressToken] = []
        var group: String?
        var angle = false
        for token in tokens {
            switch token {
            case .special("<"):
                angle = true
                element.append(token)
            case .special(">"):
                angle = false
                element.append(token)
            case .special(":") where !angle && group == nil && !element.contains(.special("@")):
                // `display-name ":"` opens a group.
                group = Self.phrase(element) ?? ""
                element = []
            case .special(",") where !angle, .special(";") where !angle:
                if let address = Self.mailbox(element, group: group) { result.append(address) }
                element = []
                if token == .special(";") { group = nil }
            default:
                element.append(token)
            }
        }
        if let address = Self.mailbox(element, group: group) { result.append(address) }
        return result
    }

    /// A mailbox: `[phrase] "<" [route ":"] addr-spec ">"` or a bare addr-spec.
    static func mailbox(_ element: [AddressToken], group: String?) -> HeaderAddress? {
        var spec = element[...]
        var name: String?
        if let open = element.firstIndex(of: .special("<")) {
            name = phrase(element[..<open])
            let close = element[open...].firstIndex(of: .special(">")) ?? element.endIndex
            spec = element[(open + 1)..<close]
            // obs-route: `@a,@b:` before the address.
            if spec.first == .special("@"), let colon = spec.lastIndex(of: .special(":")) { spec = spec[(colon + 1)...] }
        }
        guard let at = spec.lastIndex(of: .special("@")) else { return nil }
        let local = spec[..<at].map(text).joined()
        let domain = spec[(at + 1)...].map(text).joined()
        guard !local.isEmpty, !domain.isEmpty, !domain.contains("@") else { return nil }
        return HeaderAddress(displayName: name, localPart: local, domain: domain, group: group)
    }

    /// The words of a display name, joined by single spaces; nil when there are none.
    static func phrase(_ tokens: some Collection<AddressToken>) -> String? {
        let words = tokens.map(text).filter { !$0.isEmpty }
        return words.isEmpty ? nil : words.joined(separator: " ")
    }

    static func text(_ token: AddressToken) -> String {
        switch token {
        case .atom(let s), .quoted(let s), .literal(let s): s
        case .special(let c): String(c)
        }
    }
}
