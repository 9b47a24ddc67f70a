import Foundation
import NIOCore
import SMTPCore
import SluicePipeline
@testable import SluiceSpool
import SluiceStageAPI
import Testing

@Suite("Spool")
struct SpoolTests {
    static let message = Array("Received: from client.test\r\n\tby mx.example.test\r\nSubject: hi\r\n\r\nbody line\r\n".utf8)

    static func bodyOffset(_ content: [UInt8]) -> Int { HeaderSection.parse(content, atEnd: true).bodyOffset }

    static func commit(_ id: String, headers: [HeaderField]? = nil, bodyOffset: Int, replacement: String? = nil, quarantine: Bool = false) -> SpoolDraft.Commit {
        SpoolDraft.Commit(envelope: envelope(id), headers: headers, bodyOffset: bodyOffset, replacementBody: replacement, quarantine: quarantine)
    }

    // MARK: Writing

    @Test func commitWritesAQueueFileLoadReads() async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            try await draft.append(Self.message)
            #expect(try await draft.size == Self.message.count)
            #expect(try await draft.headerPrefix == Self.message)
            try await draft.commit(Self.commit(id, bodyOffset: Self.bodyOffset(Self.message)))

            #expect(s.files(s.layout.queue) == [id])
            #expect(s.files(s.layout.tmp).isEmpty)
            let stored = try s.spool.load(id)
            #expect(stored.path == s.layout.queueFile(id))
            #expect(stored.contentLength == Self.message.count)
            #expect(stored.envelope.id == id)
            #expect(stored.envelope.size == Self.message.count)
            #expect(stored.envelope.sender == .mailbox(sender))
            #expect(stored.envelope.senderParameters == [ESMTPParameter(keyword: "BODY", value: "8BITMIME")])
            #expect(stored.envelope.recipients == [.init(address: recipient, parameters: [], destination: "maildir:/srv/mail")])
            #expect(stored.envelope.client.helo == "client.test")
            #expect(stored.envelope.body == .eightBitMIME)
            #expect(stored.envelope.receivedAt == 1_795_941_053.5)
            #expect(stored.envelope.trace == [TraceEntry(stage: "access", phase: "connect", outcome: "continue", micros: 5)])
            #expect(Array(s.bytes(stored.path).prefix(stored.contentLength)) == Self.message)
            #expect(s.spool.list() == [id])
        }
    }

    @Test func commitAfterAFlushKeepsAllContent() async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            try await draft.append(Array(Self.message.prefix(20)))
            try await draft.flush()
            #expect(s.files(s.layout.tmp) == [id])
            try await draft.append(Array(Self.message.dropFirst(20)))
            try await draft.commit(Self.commit(id, bodyOffset: Self.bodyOffset(Self.message)))
            let stored = try s.spool.load(id)
            #expect(Array(s.bytes(stored.path).prefix(stored.contentLength)) == Self.message)
            #expect(s.files(s.layout.tmp).isEmpty)
        }
    }

    @Test func draftOverTheSpillThreshold() async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            var content = Array("Subject: big\r\n\r\n".utf8)
            try await draft.append(content)
            var flushes = 0
            var line: UInt8 = 0
            while content.count < SpoolDraft.spillThreshold + 100_000 {
                // 64 KiB of numbered 64-octet lines, so misplaced bytes would show
                var chunk: [UInt8] = []
                for _ in 0..<1024 {
                    chunk += [UInt8](repeating: UInt8(ascii: "a") + line % 26, count: 62) + [0x0D, 0x0A]
                    line &+= 1
                }
                content += chunk
                try await draft.append(chunk)
                if try await draft.shouldFlush {
                    try await draft.flush()
                    flushes += 1
                }
            }
            #expect(flushes >= 1)
            #expect(try await draft.size == content.count)
            let prefix = try await draft.headerPrefix
            #expect(prefix.count == SpoolDraft.headerPrefixLimit)
            #expect(prefix == Array(content.prefix(SpoolDraft.headerPrefixLimit)))

            // End-of-message stages read the body back from the spool file.
            try await draft.flush()
            let offset = Self.bodyOffset(Array(content.prefix(100)))
            #expect(try await draft.body(from: offset).collect() == Array(content[offset...]))

            try await draft.commit(Self.commit(id, bodyOffset: offset))
            let stored = try s.spool.load(id)
            #expect(stored.contentLength == content.count)
            #expect(Array(s.bytes(stored.path).prefix(stored.contentLength)) == content)
        }
    }

    /// Stages changed the header section: the queue file holds the new header section and the received body.
    @Test(arguments: [false, true])
    func commitWithEditedHeadersRewritesTheMessage(flushFirst: Bool) async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            let original = Array("Subject: old\r\nX-Drop: 1\r\n\r\nbody\r\n".utf8)
            try await draft.append(original)
            if flushFirst { try await draft.flush() }
            let headers = [HeaderField(name: "Subject", value: " new"), HeaderField(name: "X-Added", value: " yes")]
            do {
                try await draft.commit(Self.commit(id, headers: headers, bodyOffset: Self.bodyOffset(original)))
            } catch {
                Issue.record("commit with edited headers failed: \(error)")
                return
            }
            let expected = Array("Subject: new\r\nX-Added: yes\r\n\r\nbody\r\n".utf8)
            let stored = try s.spool.load(id)
            #expect(stored.contentLength == expected.count)
            #expect(stored.envelope.size == expected.count)
            #expect(Array(s.bytes(stored.path).prefix(stored.contentLength)) == expected)
            #expect(s.files(s.layout.tmp).isEmpty)
        }
    }

    @Test func commitWithReplacementBodyAndHeaders() async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            let original = Array("Subject: old\r\n\r\nold body\r\n".utf8)
            try await draft.append(original)
            let replacement = s.root + "/replacement-body"
            s.write(replacement, Array("new body\r\n".utf8))
            try await draft.commit(Self.commit(
                id, headers: [HeaderField(name: "Subject", value: " replaced")], bodyOffset: Self.bodyOffset(original), replacement: replacement
            ))
            let stored = try s.spool.load(id)
            #expect(Array(s.bytes(stored.path).prefix(stored.contentLength)) == Array("Subject: replaced\r\n\r\nnew body\r\n".utf8))
            #expect(!FileManager.default.fileExists(atPath: replacement), "the replacement file is consumed")
        }
    }

    /// A stage replaced only the body: the received header section stays.
    @Test func commitWithReplacementBodyKeepsTheReceivedHeaders() async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            let original = Array("Subject: old\r\n\r\nold body\r\n".utf8)
            try await draft.append(original)
            let replacement = s.root + "/replacement-body"
            s.write(replacement, Array("new body\r\n".utf8))
            do {
                try await draft.commit(Self.commit(id, bodyOffset: Self.bodyOffset(original), replacement: replacement))
            } catch {
                Issue.record("commit with a replacement body failed: \(error)")
                return
            }
            let stored = try s.spool.load(id)
            #expect(Array(s.bytes(stored.path).prefix(stored.contentLength)) == Array("Subject: old\r\n\r\nnew body\r\n".utf8))
        }
    }

    @Test func quarantine() async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            try await draft.append(Self.message)
            try await draft.commit(Self.commit(id, bodyOffset: Self.bodyOffset(Self.message), quarantine: true))
            #expect(s.files(s.layout.queue).isEmpty)
            #expect(s.spool.list(quarantined: true) == [id])
            #expect(try s.spool.load(id, quarantined: true).contentLength == Self.message.count)
            #expect(throws: SpoolError.self) { try s.spool.load(id) }
        }
    }

    @Test func discardLeavesNothing() async throws {
        try await withSpool { s in
            let flushed = try await LoopDraft(s)
            try await flushed.append(Self.message)
            try await flushed.flush()
            #expect(s.files(s.layout.tmp).count == 1)
            try await flushed.discard()

            let inMemory = try await LoopDraft(s)
            try await inMemory.append(Self.message)
            try await inMemory.discard()

            #expect(await eventually { s.files(s.layout.tmp).isEmpty })
            #expect(s.files(s.layout.queue).isEmpty)
        }
    }

    // MARK: Reading and recovery

    @Test func recoverRemovesUnfinishedFilesAndSetsCorruptOnesAside() async throws {
        try await withSpool { s in
            let good = QueueID.make()
            let draft = try await LoopDraft(s, id: good)
            try await draft.append(Self.message)
            try await draft.commit(Self.commit(good, bodyOffset: Self.bodyOffset(Self.message)))

            let garbage = QueueID.make()
            let truncated = QueueID.make()
            s.write(s.layout.tmpFile("UNFINISHED"), Array("half a message".utf8))
            s.write(s.layout.queueFile(garbage), Array("not a queue file at all".utf8))
            s.write(s.layout.queueFile(truncated), Array(s.bytes(s.layout.queueFile(good)).dropLast(5)))
            s.write(s.layout.queueFile("not-an-id"), Array("junk".utf8))

            let ids = try s.spool.recover(logger: silentLogger)
            #expect(ids == [good])
            #expect(s.files(s.layout.tmp).isEmpty)
            #expect(s.files(s.layout.queue) == [good])
            #expect(s.files(s.layout.corrupt) == [garbage, truncated, "not-an-id"].sorted())
        }
    }

    @Test func recoverCreatesTheFolders() async throws {
        try await withSpool { s in
            try FileManager.default.removeItem(atPath: s.root)
            #expect(try s.spool.recover(logger: silentLogger).isEmpty)
            for dir in [s.layout.tmp, s.layout.queue, s.layout.quarantine, s.layout.corrupt] {
                #expect(FileManager.default.fileExists(atPath: dir), "\(dir)")
            }
        }
    }

    @Test(arguments: [
        (Array("x".utf8), "too short"),
        (Array(String(repeating: "x", count: 200).utf8), "no valid trailer"),
        (Array("{}".utf8) + SpoolFileFormat.trailer(envelopeOffset: 0), "bad envelope"),
        (Array("content".utf8) + SpoolFileFormat.trailer(envelopeOffset: 999), "no valid trailer"),
    ])
    func corruptFiles(_ bytes: [UInt8], _ why: String) async throws {
        try await withSpool { s in
            let id = QueueID.make()
            s.write(s.layout.queueFile(id), bytes)
            let error = #expect(throws: SpoolError.self) { try s.spool.load(id) }
            #expect(error?.description.contains(why) == true, "\(String(describing: error))")
        }
    }

    @Test(arguments: ["../../etc/passwd", "", "abc", "0123456789ABCDEF0"])
    func loadRefusesUnknownOrInvalidIDs(_ id: String) async throws {
        try await withSpool { s in
            let error = #expect(throws: SpoolError.self) { try s.spool.load(id) }
            guard case .notFound? = error else {
                Issue.record("expected notFound, got \(String(describing: error))")
                return
            }
        }
    }

    @Test func removeDeletesADeliveredMessage() async throws {
        try await withSpool { s in
            let id = QueueID.make()
            let draft = try await LoopDraft(s, id: id)
            try await draft.append(Self.message)
            try await draft.commit(Self.commit(id, bodyOffset: Self.bodyOffset(Self.message)))
            try s.spool.remove(id)
            #expect(s.spool.list().isEmpty)
        }
    }

    @Test func listShowsOnlyQueueIDsOldestFirst() async throws {
        try await withSpool { s throws in
            let ids = (0..<3).map { _ in QueueID.make() }
            for id in ids.reversed() { s.write(s.layout.queueFile(id), []) }
            s.write(s.layout.queueFile("stray.txt"), [])
            #expect(s.spool.list() == ids.sorted())
        }
    }

    @Test func trailerHasAFixedSize() {
        let t = SpoolFileFormat.trailer(envelopeOffset: 42)
        #expect(String(decoding: t, as: UTF8.self) == "\nSLUICE-ENVELOPE 00000000000000000042\n")
        #expect(t.count == SpoolFileFormat.trailerSize)
        #expect(SpoolFileFormat.trailer(envelopeOffset: Int.max).count == SpoolFileFormat.trailerSize)
    }

    @Test func freeSpace() async throws {
        try await withSpool(minFreeBytes: 0) { s in #expect(s.spool.hasFreeSpace()) }
        try await withSpool(minFreeBytes: UInt64.max) { s in #expect(!s.spool.hasFreeSpace()) }
    }
}

@Suite("QueueID")
struct QueueIDTests {
    @Test func idsAreUniqueAndValid() {
        var seen = Set<String>()
        for _ in 0..<20_000 {
            let id = QueueID.make()
            #expect(id.count == 16)
            #expect(QueueID.isValid(id))
            seen.insert(id)
        }
        #expect(seen.count == 20_000)
    }

    @Test func idsAreUniqueAcrossThreads() async {
        let batches = await withTaskGroup(of: [String].self) { group in
            for _ in 0..<4 { group.addTask { (0..<5000).map { _ in QueueID.make() } } }
            var all: [String] = []
            for await batch in group { all += batch }
            return all
        }
        #expect(Set(batches).count == batches.count)
    }

    @Test(arguments: [
        ("0123456789ABCDEF", true), ("65F3A2B1C4D5E0A1", true), ("A", true), (String(repeating: "F", count: 32), true),
        ("", false), ("abc", false), ("../x", false), ("ABC/DEF", false), (String(repeating: "F", count: 33), false), ("G123", false),
    ])
    func validity(_ id: String, _ valid: Bool) {
        #expect(QueueID.isValid(id) == valid)
    }
}

@Suite("Queue files of earlier releases")
struct EarlierQueueFileTests {
    /// A queue file as the release before typed destinations wrote it: destinations as text,
    /// the trace in its older object form. It loads, and its destinations come back typed.
    @Test func loadsWithTypedDestinations() async throws {
        try await withSpool { s in
            let content = Array("Subject: from the last release\r\n\r\nbody\r\n".utf8)
            let json = #"{"body":"8BITMIME","client":{"address":"192.0.2.10","helo":"client.test","port":40000},"id":"0000000000001ABC","prepend":"X-Top: 1\r\n","protocolName":"ESMTP","quarantine":null,"receivedAt":1795941053.5,"recipients":[{"address":{"domain":"example.test","localPart":"user"},"destination":"maildir:\/srv\/mail","parameters":[]},{"address":{"domain":"relay.test","localPart":"a"},"destination":"smtp:\/\/10.0.0.1:2525","parameters":[{"keyword":"NOTIFY","value":"FAILURE"}]},{"address":{"domain":"far.test","localPart":"b"},"destination":"mx","parameters":[]},{"address":{"domain":"lmtp.test","localPart":"c"},"destination":"lmtp:unix:\/run\/dovecot\/lmtp","parameters":[]}],"sender":{"mailbox":{"_0":{"domain":"client.test","localPart":"sender"}}},"senderParameters":[],"size":40,"smtputf8":false,"trace":[{"micros":5,"outcome":"continue","phase":"connect","stage":"access"}]}"#
            let digits = String(content.count)
            let trailer = "\nSLUICE-ENVELOPE " + String(repeating: "0", count: 20 - digits.count) + digits + "\n"
            s.write(s.layout.queueFile("0000000000001ABC"), content + Array(json.utf8) + Array(trailer.utf8))
            let store = FileQueueStore(spool: s.spool)
            guard let message = try await store.claim("0000000000001ABC") else {
                Issue.record("the old queue file did not load")
                return
            }
            #expect(message.envelope.recipients.map(\.destination) == [
                .maildir(root: "/srv/mail"), .relay(.smtp(host: "10.0.0.1", port: 2525)), .mx, .relay(.lmtpUnix(path: "/run/dovecot/lmtp")),
            ])
            #expect(message.contentLength == content.count)
            #expect(message.prefix == Array("X-Top: 1\r\n".utf8))
            #expect(message.envelope.trace.first?.stage == "access")
            #expect(try await store.list().map(\.envelope.id) == ["0000000000001ABC"])
        }
    }
}
