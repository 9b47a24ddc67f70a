/// One `keyword[=value]` ESMTP parameter of MAIL or RCPT (RFC 5321 4.1.2: esmtp-param).
public struct ESMTPParameter: Hashable, Sendable, CustomStringConvertible, Codable {
    /// The keyword, uppercased.
    public var keyword: String
    public var value: String?

    public init(keyword: String, value: String? = nil) {
        self.keyword = keyword.uppercased()
        self.value = value
    }

    public var description: String { value.map { "\(keyword)=\($0)" } ?? keyword }
}

/// The BODY parameter of MAIL (RFC 6152).
public enum BodyType: String, Hashable, Sendable, Codable {
    case sevenBit = "7BIT"
    case eightBitMIME = "8BITMIME"
}

/// The parameters of MAIL FROM the gateway understands, and the rest.
public struct MailParameters: Hashable, Sendable {
    /// SIZE=n (RFC 1870), the client's estimate of the message size.
    public var size: UInt64?
    /// BODY=7BIT|8BITMIME (RFC 6152).
    public var body: BodyType?
    /// SMTPUTF8 (RFC 6531).
    public var smtputf8 = false
    /// AUTH=mailbox or AUTH=<> (RFC 4954 5), as xtext; only an authenticated client's counts.
    public var auth: String?
    /// RET=FULL|HDRS (RFC 3461 4.3).
    public var ret: DSNReturn?
    /// ENVID=xtext (RFC 3461 4.4), decoded.
    public var envelopeID: String?
    /// Parameters not understood here; the session refuses them (555 5.5.4) unless an extension claims them.
    public var other: [ESMTPParameter] = []

    public init() {}

    /// Reads a MAIL parameter list as the session does (e.g. the arguments of a milter's
    /// change-sender); throws the reply a client would get for a bad one.
    public init(_ list: [ESMTPParameter]) throws(SMTPCommandError) {
        self = try ParameterParser.mailParameters(list)
    }
}

/// Parses `SP esmtp-param *(SP esmtp-param)` (RFC 5321 4.1.2), keywords unique.
enum ParameterParser {
    static func parse(_ bytes: ArraySlice<UInt8>) throws(SMTPCommandError) -> [ESMTPParameter] {
        var result: [ESMTPParameter] = []
        var seen = Set<String>()
        for token in bytes.split(separator: UInt8(ascii: " ")) {
            let eq = token.firstIndex(of: UInt8(ascii: "="))
            let keywordBytes = token[..<(eq ?? token.endIndex)]
            guard let first = keywordBytes.first, SMTPGrammar.isLetDig(first),
                  keywordBytes.allSatisfy(SMTPGrammar.isKeywordChar)
            else { throw .syntax("5.5.4", "Bad parameter syntax") }
            var value: String?
            if let eq {
                let v = token[(eq + 1)...]
                guard !v.isEmpty, v.allSatisfy(SMTPGrammar.isValueChar), let text = String(validating: v, as: UTF8.self)
                else { throw .syntax("5.5.4", "Bad parameter value") }
                value = text
            }
            let parameter = ESMTPParameter(keyword: String(decoding: keywordBytes, as: UTF8.self), value: value)
            guard seen.insert(parameter.keyword).inserted else { throw .syntax("5.5.4", "Duplicate parameter \(parameter.keyword)") }
            result.append(parameter)
        }
        return result
    }

    static func mailParameters(_ list: [ESMTPParameter]) throws(SMTPCommandError) -> MailParameters {
        var params = MailParameters()
        for p in list {
            switch p.keyword {
            case "SIZE":
                // size-value = 1*20DIGIT; a value beyond UInt64 is simply "too big".
                guard let v = p.value, v.count <= 20, v.allSatisfy(\.isASCIIDigit) else { throw .syntax("5.5.4", "Bad SIZE parameter") }
                params.size = UInt64(v) ?? UInt64.max
            case "BODY":
                guard let v = p.value else { throw .syntax("5.5.4", "Bad BODY parameter") }
                guard let body = BodyType(rawValue: v.uppercased()) else {
                    throw SMTPCommandError(reply: SMTPReply(555, "5.5.4", "Unsupported BODY type \(v)"))
                }
                params.body = body
            case "SMTPUTF8":
                guard p.value == nil else { throw .syntax("5.5.4", "SMTPUTF8 takes no value") }
                params.smtputf8 = true
            case "AUTH":
                guard let v = p.value else { throw .syntax("5.5.4", "Bad AUTH parameter") }
                params.auth = v
            case "RET":
                guard let v = p.value, let ret = DSNReturn(rawValue: v.uppercased()) else { throw .syntax("5.5.4", "Bad RET parameter syntax") }
                params.ret = ret
            case "ENVID":
                // xtext; with SMTPUTF8 also UTF-8 characters (RFC 6533 3).
                let utf8 = list.contains { $0.keyword == "SMTPUTF8" }
                guard let v = p.value, v.utf8.count <= 100, XText.isValid(v, utf8: utf8) else {
                    throw .syntax("5.5.4", "Bad ENVID parameter syntax")
                }
                params.envelopeID = XText.decode(v)
            default:
                params.other.append(p)
            }
        }
        return params
    }
}
