/// The message as a stage sees it at end of message, with every earlier stage's edits applied.
public struct MessageView: Sendable {
    public var headers: [HeaderField]
    /// The body, streamed in chunks from the spool (never held whole in memory).
    public var body: MessageBody
    /// The size of the message as received, in octets (CRLF line ends, unstuffed).
    public var receivedSize: Int

    public init(headers: [HeaderField], body: MessageBody, receivedSize: Int) {
        self.headers = headers
        self.body = body
        self.receivedSize = receivedSize
    }

    /// The values of every field called `name` (case-insensitive), in order.
    public func values(of name: String) -> [String] {
        headers.filter { $0.name.caseInsensitiveEquals(name) }.map(\.unfoldedValue)
    }
}
