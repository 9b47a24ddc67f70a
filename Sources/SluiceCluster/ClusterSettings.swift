import Foundation

/// The `[cluster]` table: several gateway nodes share one queue and one state in PostgreSQL.
///
/// Keys:
/// - `postgres` (required): `postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (port 5432 by
///   default; `postgres://` too). `?sslmode=disable` is the only parameter taken: the
///   connection is plain, as on a loopback or a private network.
/// - `password_file` (optional): a file whose first line is the password (wins over the URL's).
/// - `node` (default: `[server] hostname`): this node's name, unique in the cluster.
/// - `lease_s` (60): a delivery claim not renewed for this long passes to another node.
///
/// Without `[cluster]` the queue is the local file spool and nothing here is used.
public struct ClusterSettings: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var node: String
    public var leaseSeconds: Int

    public init(host: String, port: Int = 5432, username: String, password: String?, database: String, node: String, leaseSeconds: Int = 60) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.node = node
        self.leaseSeconds = leaseSeconds
    }

    /// Why a `postgres` URL is not one.
    public struct URLError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Reads `postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`.
    public static func parse(url text: String) throws -> (host: String, port: Int, username: String, password: String?, database: String) {
        func fail(_ why: String) -> URLError {
            URLError(description: "'\(text)' is not a PostgreSQL URL (\(why)); write postgresql://USER@HOST:PORT/DATABASE")
        }
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else { throw fail("no scheme") }
        guard scheme == "postgresql" || scheme == "postgres" else { throw fail("the scheme is not postgresql://") }
        guard let host = components.host, !host.isEmpty else { throw fail("no host") }
        guard let user = components.user, !user.isEmpty else { throw fail("no user") }
        let database = String(components.path.drop(while: { $0 == "/" }))
        guard !database.isEmpty, !database.contains("/") else { throw fail("no database name after the host") }
        if let port = components.port, !(1...65535).contains(port) { throw fail("the port is out of range") }
        for item in components.queryItems ?? [] {
            guard item.name == "sslmode", item.value == "disable" else {
                throw fail("unsupported parameter '\(item.name)': only sslmode=disable is taken")
            }
        }
        let unbracketed = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        return (unbracketed, components.port ?? 5432, user.removingPercentEncoding ?? user,
                components.password.map { $0.removingPercentEncoding ?? $0 }, database.removingPercentEncoding ?? database)
    }
}
