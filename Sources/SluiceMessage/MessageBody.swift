/// A message body that can be read, in chunks, as often as needed: `for try await chunk in message.body { ... }`.
/// Each iteration reads from the spool afresh; the body is never held whole in memory.
public struct MessageBody: AsyncSequence, Sendable {
    public typealias Element = [UInt8]

    /// Pulls the next chunk; `nil` at the end.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let pull: () async throws -> [UInt8]?
        public mutating func next() async throws -> [UInt8]? { try await pull() }
    }

    private let open: @Sendable () -> () async throws -> [UInt8]?

    /// - Parameter open: returns a function that yields the next chunk each time it is called, `nil` at the end.
    public init(_ open: @escaping @Sendable () -> () async throws -> [UInt8]?) {
        self.open = open
    }

    /// A body held in memory (tests, small replacements).
    public init(bytes: [UInt8]) {
        self.open = {
            var done = bytes.isEmpty
            return {
                if done { return nil }
                done = true
                return bytes
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(pull: open()) }

    /// Reads the whole body into memory. For tests and small bodies only.
    public func collect() async throws -> [UInt8] {
        var all: [UInt8] = []
        for try await chunk in self { all += chunk }
        return all
    }
}

extension String {
    /// ASCII case-insensitive comparison, as for header names and domains.
    public func caseInsensitiveEquals(_ other: String) -> Bool {
        self.utf8.count == other.utf8.count
            && zip(self.utf8, other.utf8).allSatisfy { a, b in
                (a >= 0x41 && a <= 0x5A ? a | 0x20 : a) == (b >= 0x41 && b <= 0x5A ? b | 0x20 : b)
            }
    }
}
