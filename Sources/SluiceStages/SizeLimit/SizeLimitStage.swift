import SluiceStageAPI

/// `use = "size-limit"`: the largest message accepted.
///
/// Keys:
/// - `max_bytes` (default 10485760): advertised as `SIZE max_bytes` in EHLO; `MAIL ... SIZE=` above it
///   gets 552 5.3.4; a larger message is read to its end, refused with 552 5.3.4, and nothing is spooled.
///
/// The session enforces the limit while data streams (no per-chunk stage call), so the stage
/// itself hooks no phase.
public struct SizeLimitStage: Stage {
    public let maxBytes: Int
    public var phases: Set<StagePhase> { [] }
    public var messageSizeLimit: Int? { maxBytes }

    public static let factory = StageFactory(
        name: "size-limit", summary: "refuses messages over max_bytes (SIZE in EHLO, 552 5.3.4)"
    ) { config, _ in try SizeLimitStage(config: config) }

    public init(config: ConfigTable) throws {
        maxBytes = try config.int("max_bytes", default: 10_485_760, range: 1...Int(Int32.max))
    }
}
