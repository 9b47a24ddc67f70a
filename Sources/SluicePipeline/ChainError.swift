/// A chain order that cannot work, found at startup and by `check-config`.
public struct ChainError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
