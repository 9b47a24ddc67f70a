import Logging
import NIOCore
import NIOPosix
import PostgresNIO

/// How a node reaches its cluster's PostgreSQL: the pooled client of the running gateway, and
/// the single connection that checks the settings at startup (and for `check-config`), so that
/// a wrong password or a too-new schema is said as such.
extension ClusterSettings {
    /// Statements that hang are cut after this (the server's `statement_timeout`).
    public static let statementTimeoutMilliseconds = 30_000

    public var connectionConfiguration: PostgresConnection.Configuration {
        var c = PostgresConnection.Configuration(host: host, port: port, username: username, password: password, database: database, tls: .disable)
        c.options.connectTimeout = .seconds(5)
        c.options.additionalStartupParameters = [("statement_timeout", "\(Self.statementTimeoutMilliseconds)"), ("application_name", "sluice \(node)")]
        return c
    }

    public var clientConfiguration: PostgresClient.Configuration {
        var c = PostgresClient.Configuration(host: host, port: port, username: username, password: password, database: database, tls: .disable)
        c.options.connectTimeout = .seconds(5)
        c.options.additionalStartupParameters = [("statement_timeout", "\(Self.statementTimeoutMilliseconds)"), ("application_name", "sluice \(node)")]
        c.options.maximumConnections = 40
        return c
    }

    /// What a first connection found.
    public enum Problem: Error, CustomStringConvertible {
        /// The server refused the credentials (SQLSTATE 28P01 / 28000).
        case authentication(String)
        /// The database does not exist (3D000).
        case noDatabase(String)
        /// The schema is newer than this binary.
        case schemaTooNew(ClusterSchema.TooNew)
        /// The server cannot be reached now (not a configuration error: the node waits for it).
        case unreachable(String)
        /// Anything else the server said.
        case other(String)

        public var isConfigurationError: Bool {
            switch self {
            case .authentication, .noDatabase, .schemaTooNew: true
            case .unreachable, .other: false
            }
        }

        public var description: String {
            switch self {
            case .authentication(let m): "PostgreSQL refused the login: \(m) (check the user in postgres and the password in password_file or the URL)"
            case .noDatabase(let m): "\(m) (create it, e.g. createdb -O USER DATABASE, or fix the URL)"
            case .schemaTooNew(let e): e.description
            case .unreachable(let m): "PostgreSQL is not reachable: \(m)"
            case .other(let m): m
            }
        }
    }

    /// Connects once, migrates the schema (`migrate`) or only checks its version, and closes.
    public func check(migrate: Bool, logger: Logger) async throws(Problem) {
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration: connectionConfiguration, id: 1, logger: logger)
        } catch {
            throw Self.classify(error)
        }
        defer { Task { try? await connection.close() } }
        do {
            if migrate {
                try await ClusterSchema.migrate(connection, logger: logger)
            } else {
                try await ClusterSchema.check(connection, logger: logger)
            }
        } catch let tooNew as ClusterSchema.TooNew {
            throw .schemaTooNew(tooNew)
        } catch {
            throw Self.classify(error)
        }
    }

    static func classify(_ error: any Error) -> Problem {
        if error is ClusterTimeout { return .unreachable("\(error)") }
        guard let psql = error as? PSQLError else { return .unreachable("\(error)") }
        let message = psql.serverInfo?[.message] ?? "\(psql.code)"
        switch psql.serverInfo?[.sqlState] {
        case "28P01", "28000": return .authentication(message)
        case "3D000": return .noDatabase(message)
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server is stopping or starting
        case "57P01", "57P02", "57P03": return .unreachable(message)
        case .some: return .other(message)
        case nil:
            if psql.code == .connectionError || psql.code == .serverClosedConnection || psql.code == .clientClosedConnection {
                return .unreachable(psql.underlying.map { "\($0)" } ?? "\(psql.code)")
            }
            return .other("\(psql.code)")
        }
    }
}
