/// One line of a message's stage trace: what a stage decided at a phase and how long it took.
/// Stored with the spooled message and shown by `sluice queue show`.
public struct TraceEntry: Sendable, Hashable, Codable, CustomStringConvertible {
    public var stage: String
    public var phase: String
    /// The verdict, an edit, or the failure, as text.
    public var outcome: String
    /// Microseconds the stage took.
    public var micros: Int

    public init(stage: String, phase: String, outcome: String, micros: Int) {
        self.stage = stage
        self.phase = phase
        self.outcome = outcome
        self.micros = micros
    }

    public var description: String { "\(stage)@\(phase): \(outcome) (\(micros)us)" }
}
