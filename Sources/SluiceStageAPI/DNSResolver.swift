/// The gateway's one DNS resolver, shared by every stage and by delivery (MX lookups).
///
/// The gateway's resolver is libunbound with a cache; `[dns] servers` and `[dns] timeout_ms`
/// configure it. Stages get it from `StageEnvironment.resolver`.
public protocol DNSResolver: Sendable {
    /// Asks for records of `type` at `name`. A definite negative answer (NXDOMAIN, NODATA)
    /// is an answer, not an error; a server failure comes back as an answer with its RCODE.
    /// - Throws: `DNSError` when no answer came in time or the query could not be made.
    func query(_ name: String, _ type: DNSRecordType) async throws -> DNSAnswer

    /// The same query with a completion, for code that cannot await (a C library's callback
    /// on a thread pool). The default runs `query` in a task.
    func query(_ name: String, _ type: DNSRecordType, completion: @escaping @Sendable (Result<DNSAnswer, DNSError>) -> Void)

    /// The answer the resolver's cache holds for the question, without asking anyone; nil when
    /// it has none (the default). Lets a stage skip starting work for a lookup already answered.
    func cachedAnswer(_ name: String, _ type: DNSRecordType) -> DNSAnswer?
}

extension DNSResolver {
    public func cachedAnswer(_ name: String, _ type: DNSRecordType) -> DNSAnswer? { nil }

    public func query(_ name: String, _ type: DNSRecordType, completion: @escaping @Sendable (Result<DNSAnswer, DNSError>) -> Void) {
        Task {
            do {
                completion(.success(try await query(name, type)))
            } catch let error as DNSError {
                completion(.failure(error))
            } catch {
                completion(.failure(DNSError(.failure, "\(error)")))
            }
        }
    }
}

/// A query that produced no answer.
public struct DNSError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// No answer within `[dns] timeout_ms`.
        case timeout
        /// The name is not a valid domain name.
        case badName
        /// The resolver failed (network, configuration).
        case failure
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// A resolver that answers nothing: for stages built without a gateway (unit tests, tools).
public struct NoResolver: DNSResolver {
    public init() {}
    public func query(_ name: String, _ type: DNSRecordType) async throws -> DNSAnswer {
        throw DNSError(.failure, "no DNS resolver configured")
    }
}
