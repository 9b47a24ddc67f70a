import SMTPCore
import SluicePipeline
import SluiceStageAPI
import Testing

/// A content-reading stage after a stage that edits at end of message sees the edited message
/// (its data phase replayed then), as Postfix hands each milter what the milters before it left.
@Suite("StageChain data replay")
struct DataReplayTests {
    let received = HeaderField(name: "Received", value: " from client.test by mx.example.test; now")
    var draft: MessageDraft {
        MessageDraft(
            headers: [received, HeaderField(name: "Subject", value: " hello"), HeaderField(name: "From", value: " <a@client.test>")],
            sender: .mailbox(Mailbox(localPart: "sender", domain: "client.test")), recipients: [firstRecipient])
    }

    func run(_ chain: StageChain, chunks: [[UInt8]] = [Array("original body\r\n".utf8)]) async -> StageChain.EndOfMessageResult {
        await chain.endOfMessage(
            draft: draft, receivedSize: 100,
            body: { d in
                if let path = d.replacementBodyPath { return MessageBody(bytes: Array("replaced by \(path)\r\n".utf8)) }
                return MessageBody {
                    var rest = chunks
                    return { rest.isEmpty ? nil : rest.removeFirst() }
                }
            },
            hiding: received, session: testSession, transaction: testTransaction)
    }

    @Test func aReaderAfterAnEditorIsReplayedWithTheEditedMessage() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("reader1", [.data, .endOfMessage], log: log)),
            entry(FakeStage("editor", [.endOfMessage], capabilities: [.addsHeaders, .changesHeaders, .replacesBody],
                            edits: [.changeHeader(name: "Subject", occurrence: 1, value: "edited"), .addHeader(name: "X-Added", value: "1"),
                                    .deleteHeader(name: "From", occurrence: 1), .replaceBody(path: "/new")], log: log)),
            entry(FakeStage("reader2", [.data, .endOfMessage], log: log)),
        ])
        #expect(!chain.replaysData("reader1"))
        #expect(chain.replaysData("reader2"))
        #expect(!chain.replaysData("editor"))
        // Streaming reaches only the first reader.
        _ = await chain.headers(draft.headers, session: testSession, transaction: testTransaction)
        #expect(log.all == ["reader1@headers Received,Subject,From"])

        let result = await run(chain)
        #expect(result.verdict == .continue)
        // Our own Received: is not shown; the body is the replaced one.
        #expect(Array(log.all.dropFirst()) == [
            "reader1@eom", "editor@eom", "reader2@headers Subject,X-Added", "reader2@body \("replaced by /new\r\n".utf8.count)", "reader2@eom",
        ])
        #expect(result.trace.contains { $0.stage == "reader2" && $0.phase == "data" && $0.outcome == "continue" })
    }

    @Test func theReplayedHeadersCarryTheEditedValues() async throws {
        let seen = Seen<[HeaderField]>()
        struct Recorder: Stage {
            let seen: Seen<[HeaderField]>
            var phases: Set<StagePhase> { [.data] }
            func headers(_ headers: [HeaderField], session: SessionInfo, transaction: TransactionInfo) async throws -> StageVerdict {
                seen.set(headers)
                return .continue
            }
        }
        let chain = try StageChain([
            entry(FakeStage("editor", [.endOfMessage], capabilities: [.addsHeaders, .changesHeaders],
                            edits: [.changeHeader(name: "Subject", occurrence: 1, value: "edited"),
                                    .insertHeader(index: 0, name: "X-Top", value: "top")])),
            StageEntry(name: "recorder", kind: "test", stage: Recorder(seen: seen)),
        ])
        // A data-only stage still runs, at end of message, in its place.
        #expect(chain.hooks(.endOfMessage))
        #expect(!chain.hooks(.data))
        _ = await run(chain)
        #expect(seen.get?.map(\.description) == ["X-Top: top", "Subject: edited", "From: <a@client.test>"])
    }

    @Test func streamingStaysWhenNothingBeforeCanEdit() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("reader", [.data, .endOfMessage], capabilities: [.readsBody], log: log)),
            // adds headers, but not at end of message (a MAIL-time stage such as spf)
            entry(FakeStage("mail-time", [.mailFrom], capabilities: [.addsHeaders], log: log)),
            entry(FakeStage("milter", [.data, .endOfMessage], capabilities: [.addsHeaders, .changesHeaders, .replacesBody], log: log)),
        ])
        #expect(!chain.replaysData("reader"))
        #expect(!chain.replaysData("milter"))
        _ = await run(chain)
        #expect(log.all == ["reader@eom", "milter@eom"])
    }

    @Test func theBodyIsFedChunkByChunk() async throws {
        let log = CallLog()
        let chunks = (0..<5).map { _ in [UInt8](repeating: UInt8(ascii: "x"), count: 1000) }
        let chain = try StageChain([
            entry(FakeStage("editor", [.endOfMessage], capabilities: [.addsHeaders], edits: [.addHeader(name: "X", value: "1")])),
            entry(FakeStage("reader", [.data, .endOfMessage], log: log)),
        ])
        let result = await run(chain, chunks: chunks)
        #expect(log.all.filter { $0.hasPrefix("reader@body") } == Array(repeating: "reader@body 1000", count: 5))
        // one trace line for the whole data phase, as for a streamed message
        #expect(result.trace.filter { $0.stage == "reader" && $0.phase == "data" }.count == 1)
    }

    @Test func aRefusalInTheReplayedDataPhaseEndsEndOfMessage() async throws {
        let log = CallLog()
        let chain = try StageChain([
            entry(FakeStage("editor", [.endOfMessage], capabilities: [.addsHeaders], edits: [.addHeader(name: "X", value: "1")], log: log)),
            entry(FakeStage("refuser", [.data, .endOfMessage], verdict: .reject(550, "5.7.1", "no"), log: log)),
            entry(FakeStage("later", [.endOfMessage], log: log)),
        ])
        let result = await run(chain)
        #expect(summary(result.verdict) == "reject 550 5.7.1")
        #expect(log.all == ["editor@eom", "refuser@headers Subject,From,X"])
        #expect(result.draft.headers.map(\.name) == ["Received", "Subject", "From", "X"], "the editor's edit stays applied")
    }

    @Test func aFailingBodyReadIsTheStagesFailure() async throws {
        struct ReadError: Error {}
        let chain = try StageChain([
            entry(FakeStage("editor", [.endOfMessage], capabilities: [.addsHeaders], edits: [.addHeader(name: "X", value: "1")])),
            entry(FakeStage("reader", [.data, .endOfMessage]), onError: .tempfail),
        ])
        let result = await chain.endOfMessage(
            draft: draft, receivedSize: 1,
            body: { _ in MessageBody { { throw ReadError() } } },
            session: testSession, transaction: testTransaction)
        #expect(summary(result.verdict) == "tempfail 451 4.3.0")
        #expect(result.trace.contains { $0.stage == "reader" && $0.outcome.hasPrefix("cannot read the message body") })
    }
}
