/// One line of a message's stage trace: what a stage decided at a phase and how long it took.
/// Stored with the spooled message and shown by `sluice queue show`.
public struct TraceEntry: Sendable, Hashable, CustomStringConvertible {
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

/// Stored compactly as `[stage, phase, outcome, micros]`; the older object form still reads.
extension TraceEntry: Codable {
    private enum Key: String, CodingKey { case stage, phase, outcome, micros }

    public init(from decoder: any Decoder) throws {
        if var list = try? decoder.unkeyedContainer() {
            stage = try list.decode(String.self)
            phase = try list.decode(String.self)
            outcome = try list.decode(String.self)
            micros = try list.decode(Int.self)
        } else {
            let object = try decoder.container(keyedBy: Key.self)
            stage = try object.decode(String.self, forKey: .stage)
            phase = try object.decode(String.self, forKey: .phase)
            outcome = try object.decode(String.self, forKey: .outcome)
            micros = try object.decode(Int.self, forKey: .micros)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var list = encoder.unkeyedContainer()
        try list.encode(stage)
        try list.encode(phase)
        try list.encode(outcome)
        try list.encode(micros)
    }
}
