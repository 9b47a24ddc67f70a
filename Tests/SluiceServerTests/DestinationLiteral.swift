import SluiceSpool

/// Destinations written as a route's `to` text, as the config gives them.
extension Destination: ExpressibleByStringLiteral {
    public init(stringLiteral text: String) {
        guard let d = Destination(parsing: text, baseDirectory: "/") else { fatalError("not a destination: \(text)") }
        self = d
    }
}
