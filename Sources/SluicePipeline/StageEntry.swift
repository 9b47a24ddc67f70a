import SluiceStageAPI

/// A stage as configured in the chain: its instance name, the registered kind, its limits.
public struct StageEntry: Sendable {
    /// `name` in `[[stage]]`, defaulting to `use`.
    public var name: String
    /// The registered stage name (`use`).
    public var kind: String
    public var stage: any Stage
    /// `timeout_ms`: how long one phase call may take.
    public var timeout: Duration
    /// `on_error`.
    public var onError: FailurePolicy

    public init(name: String, kind: String, stage: any Stage, timeout: Duration = .seconds(30), onError: FailurePolicy = .tempfail) {
        self.name = name
        self.kind = kind
        self.stage = stage
        self.timeout = timeout
        self.onError = onError
    }
}
