import Foundation
import SluicePipeline
import SluiceStageAPI
import Testing

@Suite("TraceEntry")
struct TraceEntryTests {
    @Test func storedAsAListAndReadBack() throws {
        let entry = TraceEntry(stage: "spf", phase: "mail", outcome: "reject 550 5.7.23 \"x\"", micros: 42)
        let data = try JSONEncoder().encode([entry])
        #expect(String(decoding: data, as: UTF8.self) == #"[["spf","mail","reject 550 5.7.23 \"x\"",42]]"#)
        #expect(try JSONDecoder().decode([TraceEntry].self, from: data) == [entry])
    }

    @Test func theOlderObjectFormStillReads() throws {
        let old = #"[{"stage":"dkim-verify","phase":"eom","outcome":"continue","micros":7}]"#
        let entries = try JSONDecoder().decode([TraceEntry].self, from: Data(old.utf8))
        #expect(entries == [TraceEntry(stage: "dkim-verify", phase: "eom", outcome: "continue", micros: 7)])
    }

    @Test func dataPhaseContinuesFoldIntoOneLinePerStage() {
        var trace = [TraceEntry(stage: "spf", phase: "mail", outcome: "continue", micros: 5)]
        for _ in 0..<100 {
            trace.appendFoldingData([
                TraceEntry(stage: "dkim-verify", phase: "data", outcome: "continue", micros: 2),
                TraceEntry(stage: "spam", phase: "data", outcome: "continue", micros: 1),
            ])
        }
        trace.appendFoldingData([TraceEntry(stage: "spam", phase: "data", outcome: "reject 552", micros: 3)])
        #expect(trace == [
            TraceEntry(stage: "spf", phase: "mail", outcome: "continue", micros: 5),
            TraceEntry(stage: "dkim-verify", phase: "data", outcome: "continue", micros: 200),
            TraceEntry(stage: "spam", phase: "data", outcome: "continue", micros: 100),
            TraceEntry(stage: "spam", phase: "data", outcome: "reject 552", micros: 3),
        ])
    }
}
