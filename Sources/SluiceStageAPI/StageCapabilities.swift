/// What a stage may do to a message; the chain is checked against these at startup.
public struct StageCapabilities: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// Reads message data (the `data` phase or the body at end of message).
    public static let readsBody = StageCapabilities(rawValue: 1 << 0)
    public static let addsHeaders = StageCapabilities(rawValue: 1 << 1)
    public static let changesHeaders = StageCapabilities(rawValue: 1 << 2)
    public static let changesEnvelope = StageCapabilities(rawValue: 1 << 3)
    public static let replacesBody = StageCapabilities(rawValue: 1 << 4)
    /// Seals the message (a signature over headers and body): no stage after it may change either.
    public static let sealsMessage = StageCapabilities(rawValue: 1 << 5)

    /// Capabilities that change what a seal covers.
    public static let modifiesMessage: StageCapabilities = [.addsHeaders, .changesHeaders, .replacesBody]

    static let names: [(StageCapabilities, String)] = [
        (.readsBody, "reads-body"), (.addsHeaders, "adds-headers"), (.changesHeaders, "changes-headers"),
        (.changesEnvelope, "changes-envelope"), (.replacesBody, "replaces-body"), (.sealsMessage, "seals-message"),
    ]

    public var description: String {
        let list = Self.names.filter { contains($0.0) }.map(\.1)
        return list.isEmpty ? "none" : list.joined(separator: ", ")
    }
}
