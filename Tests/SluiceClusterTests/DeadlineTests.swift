import Dispatch
import Testing
@testable import SluiceCluster

@Suite("withDeadline")
struct DeadlineTests {
    /// Waits `seconds` whatever happens: like a pool call that does not end when cancelled.
    static func stubborn(_ seconds: Double) async -> Int {
        await withCheckedContinuation { c in
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { c.resume(returning: 7) }
        }
    }

    @Test func theResultInTime() async throws {
        #expect(try await withDeadline(5) { await Self.stubborn(0.01) } == 7)
    }

    @Test func theCallerIsNotHeldByAnOperationThatIgnoresCancellation() async throws {
        let start = ContinuousClock.now
        await #expect(throws: ClusterTimeout.self) {
            _ = try await withDeadline(0.2) { await Self.stubborn(5) }
        }
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    @Test func theCallersCancellationEndsTheWait() async throws {
        let start = ContinuousClock.now
        let task = Task { try await withDeadline(30) { await Self.stubborn(5) } }
        try await Task.sleep(for: .milliseconds(50))
        task.cancel()
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    @Test func anErrorOfTheOperationComesThrough() async throws {
        struct Failure: Error {}
        await #expect(throws: Failure.self) { _ = try await withDeadline(5) { () async throws -> Int in throw Failure() } }
    }
}
