/// The stored form of addresses (the spool's envelope JSON): a mailbox is the two-element list
/// `[local part, domain]` and the null reverse path the empty list, which encode and decode
/// several times faster than keyed objects. The keyed forms written before are still read.

extension Mailbox {
    private enum CodingKeys: String, CodingKey { case localPart, domain }

    public init(from decoder: any Decoder) throws {
        if var list = try? decoder.unkeyedContainer() {
            let local = try list.decode(String.self)
            self.init(localPart: local, domain: try list.decode(String.self))
        } else {
            let keyed = try decoder.container(keyedBy: CodingKeys.self)
            self.init(localPart: try keyed.decode(String.self, forKey: .localPart), domain: try keyed.decode(String.self, forKey: .domain))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var list = encoder.unkeyedContainer()
        try list.encode(localPart)
        try list.encode(domain)
    }
}

extension ReversePath {
    private enum CodingKeys: String, CodingKey { case null, mailbox }
    private enum PayloadKeys: String, CodingKey { case _0 }

    public init(from decoder: any Decoder) throws {
        if var list = try? decoder.unkeyedContainer() {
            if list.count == 0 {
                self = .null
            } else {
                let local = try list.decode(String.self)
                self = .mailbox(Mailbox(localPart: local, domain: try list.decode(String.self)))
            }
            return
        }
        // The synthesized form: {"null":{}} or {"mailbox":{"_0":{...}}}.
        let keyed = try decoder.container(keyedBy: CodingKeys.self)
        if keyed.contains(.mailbox) {
            let payload = try keyed.nestedContainer(keyedBy: PayloadKeys.self, forKey: .mailbox)
            self = .mailbox(try payload.decode(Mailbox.self, forKey: ._0))
        } else if keyed.contains(.null) {
            self = .null
        } else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a reverse path"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .null:
            _ = encoder.unkeyedContainer()
        case .mailbox(let m):
            try m.encode(to: encoder)
        }
    }
}
