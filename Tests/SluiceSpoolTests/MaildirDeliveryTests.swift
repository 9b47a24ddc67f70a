import Foundation
import SMTPCore
import SluicePipeline
import SluiceStageAPI
@testable import SluiceDelivery
@testable import SluiceSpool
import Testing

@Suite("MaildirDelivery")
struct MaildirDeliveryTests {
    let delivery = MaildirDelivery(hostname: "mx.example.test")

    /// Writes `content` (plus bytes past `contentLength` that must not be delivered) and delivers it.
    func deliver(
        _ s: TestSpool, _ content: [UInt8], sender: ReversePath = .mailbox(sender), to rcpt: Mailbox = recipient
    ) throws -> (path: String, bytes: [UInt8]) {
        let spoolPath = s.root + "/message-\(UUID().uuidString)"
        s.write(spoolPath, content + Array("\nSLUICE-ENVELOPE trailer that is not content\n".utf8))
        let path = try delivery.deliver(spoolPath: spoolPath, contentLength: content.count, sender: sender, recipient: rcpt, root: s.root + "/mail")
        return (path, s.bytes(path))
    }

    @Test func convertsCRLFAndPrependsReturnPathAndDeliveredTo() async throws {
        try await withSpool { s in
            let (path, bytes) = try deliver(s, Array("Subject: hi\r\n\r\nline one\r\nline\rtwo\r\n".utf8))
            #expect(String(decoding: bytes, as: UTF8.self)
                == "Return-Path: <sender@client.test>\nDelivered-To: user@example.test\nSubject: hi\n\nline one\nline\rtwo\n")
            let folder = s.root + "/mail/example.test/user"
            #expect(path.hasPrefix(folder + "/new/"))
            #expect(path.hasSuffix(".mx.example.test"))
            #expect(s.files(folder + "/tmp").isEmpty)
            #expect(FileManager.default.fileExists(atPath: folder + "/cur"))
        }
    }

    @Test func nullSender() async throws {
        try await withSpool { s in
            let (_, bytes) = try deliver(s, Array("Subject: bounce\r\n\r\n".utf8), sender: .null)
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("Return-Path: <>\nDelivered-To: user@example.test\n"))
        }
    }

    /// The delivery reads 64 KiB at a time; a CRLF split between two reads is still one line end.
    @Test func crlfAcrossReadBoundaries() async throws {
        try await withSpool { s in
            let head = [UInt8](repeating: UInt8(ascii: "A"), count: 65535)
            let cases: [([UInt8], [UInt8])] = [
                (head + Array("\r\ntail\r\n".utf8), head + Array("\ntail\n".utf8)),
                (head + Array("\rB\r\n".utf8), head + Array("\rB\n".utf8)),
                (head + Array("\r".utf8), head + Array("\r".utf8)),
                (head + Array("B\r\n\r\n".utf8), head + Array("B\n\n".utf8)),
                (Array("x\r".utf8), Array("x\r".utf8)),
                (Array("\r\n\r\n".utf8), Array("\n\n".utf8)),
            ]
            for (content, expected) in cases {
                let (_, bytes) = try deliver(s, content)
                let prefix = Array("Return-Path: <sender@client.test>\nDelivered-To: user@example.test\n".utf8)
                #expect(Array(bytes.dropFirst(prefix.count)) == expected, "content of \(content.count) octets ending \(Array(content.suffix(4)))")
            }
        }
    }

    @Test func deliversWhatTheSpoolStored() async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            let content = Array("Subject: spooled\r\n\r\nbody\r\n".utf8)
            try await draft.append(content)
            try await draft.commit(.init(
                envelope: envelope(id), headers: nil, bodyOffset: 20, replacementBody: nil, quarantine: false
            ))
            let message = try s.spool.load(id)
            let path = try delivery.deliver(
                spoolPath: message.path, contentLength: message.contentLength, sender: message.envelope.sender,
                recipient: message.envelope.recipients[0].address, root: s.root + "/mail"
            )
            #expect(String(decoding: s.bytes(path), as: UTF8.self)
                == "Return-Path: <sender@client.test>\nDelivered-To: user@example.test\nSubject: spooled\n\nbody\n")
        }
    }

    /// Content a store hands out in chunks (not a local file) is converted the same way, a CRLF
    /// split between two chunks included.
    @Test func deliversChunkedContent() async throws {
        try await withSpool { s in
            let chunks: [[UInt8]] = [Array("Subject: chunks\r".utf8), Array("\n\r\nline\r".utf8), Array("two\r\n\r".utf8), Array("\n".utf8)]
            let iterator = ChunkList(chunks)
            let body = MessageBody { { await iterator.next() } }
            let path = try await delivery.deliver(
                .chunks(body, length: chunks.joined().count), prefix: Array("X-Top: 1\r\n".utf8), sender: .mailbox(sender),
                recipient: recipient, root: s.root + "/mail", threadPool: s.pool
            )
            #expect(String(decoding: s.bytes(path), as: UTF8.self)
                == "Return-Path: <sender@client.test>\nDelivered-To: user@example.test\nX-Top: 1\nSubject: chunks\n\nline\rtwo\n\n")
            #expect(s.files(s.root + "/mail/example.test/user/tmp").isEmpty)
        }
    }

    @Test func everyDeliveryGetsItsOwnFile() async throws {
        try await withSpool { s in
            var paths = Set<String>()
            for _ in 0..<20 { paths.insert(try deliver(s, Array("x\r\n".utf8)).path) }
            #expect(paths.count == 20)
            #expect(s.files(s.root + "/mail/example.test/user/new").count == 20)
        }
    }

    @Test func folderIsLowercased() {
        #expect(MaildirDelivery.folder(root: "/r", recipient: Mailbox(localPart: "First.Last", domain: "Example.TEST"))
            == "/r/example.test/first.last")
    }

    /// Local parts come from the network: they must not escape the maildir root.
    @Test(arguments: [
        Mailbox(localPart: "../../etc", domain: "example.test"),
        Mailbox(localPart: "..", domain: "example.test"),
        Mailbox(localPart: ".", domain: "example.test"),
        Mailbox(localPart: "a/b", domain: "example.test"),
        Mailbox(localPart: "", domain: "example.test"),
        Mailbox(localPart: "user", domain: ".."),
        Mailbox(localPart: ".hidden", domain: "example.test"),
        Mailbox(localPart: "a b\u{0}c", domain: "example.test"),
    ])
    func folderNamesAreSafe(_ mailbox: Mailbox) {
        let folder = MaildirDelivery.folder(root: "/r", recipient: mailbox)
        #expect(folder.hasPrefix("/r/"))
        let parts = folder.dropFirst(3).split(separator: "/", omittingEmptySubsequences: false)
        #expect(parts.count == 2, "\(folder)")
        for part in parts {
            #expect(!part.isEmpty && part != "." && part != ".." && !part.hasPrefix("."), "\(folder)")
            #expect(!part.utf8.contains(0), "\(folder)")
        }
    }

    @Test func destinationParsing() {
        #expect(Destination(parsing: "maildir:/srv/mail", baseDirectory: "/etc/sluice") == .maildir(root: "/srv/mail"))
        #expect(Destination(parsing: "maildir:var/mail", baseDirectory: "/etc/sluice") == .maildir(root: "/etc/sluice/var/mail"))
        #expect(Destination(parsing: "maildir:", baseDirectory: "/") == nil)
        #expect(Destination(parsing: "smtp:relay.example.test", baseDirectory: "/") == nil)
        #expect(Destination.maildir(root: "/srv/mail").description == "maildir:/srv/mail")
    }
}

/// Hands out fixed chunks one at a time.
actor ChunkList {
    private var chunks: [[UInt8]]
    init(_ chunks: [[UInt8]]) { self.chunks = chunks }
    func next() -> [UInt8]? { chunks.isEmpty ? nil : chunks.removeFirst() }
}
