import SMTPCore
import SluiceServer
import SluiceStageAPI
import Testing

/// The message data as the state machine follows it, without a channel: what is stored, what
/// data-phase stages get, and how their verdicts and the size decide the end of data.
@Suite("Session message data")
struct MessageDataTests {
    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test func withoutDataStagesEveryChunkIsStoredAndNothingFed() {
        var s = Session.inTransaction()
        s.send("DATA")
        #expect(s.machine.dataChunk(Self.bytes("Subject: a\r\n\r\nbody\r\n")) == ChunkPlan(store: true, feed: nil))
        #expect(s.machine.dataEnded() == nil)
        #expect(s.machine.dataOutcome(flags: MessageDataFlags()).size == 20)
        #expect(describe(s.machine.dataFinished(flags: MessageDataFlags())) == "finish")
    }

    @Test func headerSectionIsGivenOnceCompleteThenBodyChunks() {
        var s = Session.inTransaction(configuration(hooked: [.data]))
        s.send("DATA")
        #expect(s.machine.dataChunk(Self.bytes("Subject: a\r\nFrom: x@y.test\r\n")) == ChunkPlan(store: true, feed: nil), "not complete yet")
        let plan = s.machine.dataChunk(Self.bytes("\r\nfirst body bytes"))
        #expect(plan == ChunkPlan(store: true, feed: .headers(
            [HeaderField(name: "Subject", value: " a"), HeaderField(name: "From", value: " x@y.test")], rest: Self.bytes("first body bytes"))))
        s.machine.dataStagesAnswered(.continue, trace: [])
        #expect(s.machine.dataChunk(Self.bytes("more\r\n")) == ChunkPlan(store: true, feed: .body))
        #expect(s.machine.dataEnded() == nil, "the header section went already")
    }

    /// A message with no body (RFC 5322 allows it): the header section goes at the end of data.
    @Test func bodylessMessageGetsItsHeadersAtTheEnd() {
        var s = Session.inTransaction(configuration(hooked: [.data]))
        s.send("DATA")
        #expect(s.machine.dataChunk(Self.bytes("Subject: no body\r\n")).feed == nil)
        #expect(s.machine.dataEnded() == .headers([HeaderField(name: "Subject", value: " no body")], rest: []))
        #expect(s.machine.dataEnded() == nil, "given once")
    }

    @Test func aDataVerdictStopsFeedingAndRefusesAtTheEnd() {
        var s = Session.inTransaction(configuration(hooked: [.data]))
        s.send("DATA")
        _ = s.machine.dataChunk(Self.bytes("Subject: a\r\n\r\n"))
        s.machine.dataStagesAnswered(.reject(550, "5.7.1", "No thanks"), trace: [TraceEntry(stage: "x", phase: "data", outcome: "reject", micros: 1)])
        #expect(s.machine.dataChunk(Self.bytes("body\r\n")) == ChunkPlan(store: true, feed: nil), "stored, never fed again")
        #expect(s.machine.transaction?.trace.map(\.stage) == ["x"])
        #expect(describe(s.machine.dataFinished(flags: MessageDataFlags())) == "550 5.7.1")
    }

    @Test func overTheLimitNothingMoreIsStoredOrFed() {
        var s = Session.inTransaction(configuration(hooked: [.data], maxMessageBytes: 10))
        s.send("DATA")
        #expect(s.machine.dataChunk(Self.bytes("Subject: 1\r\n")).store == false)
        #expect(s.machine.dataEnded() == nil)
        #expect(describe(s.machine.dataFinished(flags: MessageDataFlags())) == "552 5.3.4")
    }

    @Test func aFailedDraftEndsInA451() {
        var s = Session.inTransaction()
        s.send("DATA")
        _ = s.machine.dataChunk(Self.bytes("x\r\n"))
        s.machine.draftFailed()
        #expect(describe(s.machine.dataFinished(flags: MessageDataFlags())) == "451 4.3.0")
    }

    @Test func bdatChunksAddUpAndTheLastOneIsKnown() {
        var s = Session.inTransaction(configuration(hooked: [.data]))
        #expect(s.send("BDAT 12") == "read 12")
        #expect(!s.machine.readingLastStoredChunk)
        #expect(s.machine.dataChunk(Self.bytes("Subject: b\r\n")).store)
        _ = s.machine.bdatChunkRead(flags: MessageDataFlags())
        #expect(s.send("BDAT 6 LAST") == "read 6 last")
        #expect(s.machine.readingLastStoredChunk)
        let plan = s.machine.dataChunk(Self.bytes("\r\nbody"))
        #expect(plan.feed == .headers([HeaderField(name: "Subject", value: " b")], rest: Self.bytes("body")))
        #expect(s.machine.dataOutcome(flags: MessageDataFlags()).size == 18)
        #expect(describe(s.machine.bdatChunkRead(flags: MessageDataFlags())) == "finish")
    }

    @Test func aRefusedBDATChunkIsNeitherStoredNorCounted() {
        var s = Session()
        _ = s.machine.connected()
        s.send("EHLO client.test")
        #expect(s.send("BDAT 5 LAST") == "read 5 discard last")
        #expect(!s.machine.readingLastStoredChunk)
        #expect(s.machine.dataChunk(Self.bytes("hello")) == ChunkPlan(store: false, feed: nil))
        #expect(s.machine.dataEnded() == nil)
    }

    @Test func theTraceFollowsTheTransaction() {
        var s = Session(configuration(hooked: [.connect, .mailFrom]))
        #expect(describe(s.machine.connected()) == "run connect")
        _ = s.machine.stagesFinished(.continue, trace: [TraceEntry(stage: "access", phase: "connect", outcome: "continue", micros: 1)])
        s.send("EHLO client.test")
        #expect(s.send("MAIL FROM:<sender@client.test>") == "run mail")
        _ = s.machine.stagesFinished(.reject(550, "5.7.1", "no"), trace: [TraceEntry(stage: "spf", phase: "mail", outcome: "reject", micros: 2)])
        #expect(s.machine.transaction == nil, "a refused MAIL takes its trace with it")
        #expect(s.send("MAIL FROM:<sender@client.test>") == "run mail")
        _ = s.machine.stagesFinished(.continue, trace: [TraceEntry(stage: "spf", phase: "mail", outcome: "continue", micros: 3)])
        #expect(s.machine.sessionTrace.map(\.stage) == ["access"])
        #expect(s.machine.transaction?.trace.map(\.micros) == [3])
    }

    @Test func etrnAsksTheQueueForARun() {
        var c = configuration()
        c.offersETRN = true
        let info = SessionInfo(id: "S1", clientAddress: "192.0.2.10", clientPort: 1, serverAddress: "198.51.100.1", serverPort: 25, serverHostname: hostname)
        var machine = SessionStateMachine(configuration: c, session: info, etrnAllowed: true)
        _ = machine.connected()
        _ = machine.commandLine(Array("EHLO client.test".utf8), pipelinedInput: false)
        #expect(describe(machine.commandLine(Array("ETRN @example.test".utf8), pipelinedInput: false)) == "queue run example.test")
        #expect(describe(machine.commandLine(Array("NOOP".utf8), pipelinedInput: false)) == "none", "waiting for the queue")
        #expect(describe(machine.queueRunStarted("example.test", messages: 0)) == "251 2.0.0")
        _ = machine.commandLine(Array("ETRN example.test".utf8), pipelinedInput: false)
        let started = machine.queueRunStarted("example.test", messages: 3)
        #expect(describe(started) == "250 2.0.0")
        #expect(replies(started).first?.lines == ["OK, queuing for node example.test started"])
    }
}
