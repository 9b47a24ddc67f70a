/// A value read from `pipeline.conf`.
public enum ConfigValue: Sendable, Hashable {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case array([ConfigValue])
    case table([String: ConfigValue])

    public var typeName: String {
        switch self {
        case .string: "string"
        case .int: "integer"
        case .double: "float"
        case .bool: "boolean"
        case .array: "array"
        case .table: "table"
        }
    }
}

/// A configuration problem, naming the file, the line when known, and the key.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var file: String
    public var line: Int?
    public var key: String
    public var message: String

    public init(file: String, line: Int?, key: String, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        let location = line.map { "\(file):\($0)" } ?? file
        return key.isEmpty ? "\(location): \(message)" : "\(location): \(key): \(message)"
    }
}

/// A configuration table (`[[stage]]` and others) with typed accessors. Each key read is marked,
/// and `finish()` reports any key nobody read, so a typo is an error rather than silently ignored.
public final class ConfigTable {
    public let path: String
    public let file: String
    private let values: [String: ConfigValue]
    private let lineOf: (String) -> Int?
    private var used = Set<String>()

    /// - Parameters:
    ///   - path: the table's name in error messages, e.g. `stage[2]` or `server`.
    ///   - lineOf: finds the line of a key of this table, when known.
    public init(path: String, file: String, values: [String: ConfigValue], lineOf: @escaping (String) -> Int? = { _ in nil }) {
        self.path = path
        self.file = file
        self.values = values
        self.lineOf = lineOf
    }

    public var keys: [String] { values.keys.sorted() }

    public func error(_ key: String, _ message: String) -> ConfigError {
        let name = key.isEmpty ? path : path.isEmpty ? key : "\(path).\(key)"
        return ConfigError(file: file, line: lineOf(key), key: name, message: message)
    }

    public func contains(_ key: String) -> Bool { values[key] != nil }

    /// Marks `key` as known without reading it.
    public func markUsed(_ key: String) { used.insert(key) }

    public func value(_ key: String) -> ConfigValue? {
        used.insert(key)
        return values[key]
    }

    private func typed<T>(_ key: String, _ what: String, _ extract: (ConfigValue) -> T?) throws -> T? {
        guard let v = value(key) else { return nil }
        guard let t = extract(v) else { throw error(key, "expected \(what), found \(v.typeName)") }
        return t
    }

    public func string(_ key: String) throws -> String? {
        try typed(key, "a string") { if case .string(let s) = $0 { s } else { nil } }
    }
    public func string(_ key: String, default d: String) throws -> String { try string(key) ?? d }

    public func int(_ key: String) throws -> Int? {
        try typed(key, "an integer") { if case .int(let i) = $0 { i } else { nil } }
    }
    public func int(_ key: String, default d: Int, range: ClosedRange<Int>? = nil) throws -> Int {
        let v = try int(key) ?? d
        if let range, !range.contains(v) { throw error(key, "must be between \(range.lowerBound) and \(range.upperBound)") }
        return v
    }

    public func double(_ key: String) throws -> Double? {
        try typed(key, "a number") {
            switch $0 {
            case .double(let d): d
            case .int(let i): Double(i)
            default: nil
            }
        }
    }

    public func bool(_ key: String, default d: Bool) throws -> Bool {
        try typed(key, "a boolean") { if case .bool(let b) = $0 { b } else { nil } } ?? d
    }

    public func strings(_ key: String) throws -> [String]? {
        try typed(key, "an array of strings") { v -> [String]? in
            guard case .array(let items) = v else { return nil }
            var out: [String] = []
            for item in items {
                guard case .string(let s) = item else { return nil }
                out.append(s)
            }
            return out
        }
    }
    public func strings(_ key: String, default d: [String]) throws -> [String] { try strings(key) ?? d }

    /// A string that must be one of `choices`.
    public func choice(_ key: String, _ choices: [String], default d: String) throws -> String {
        let v = try string(key, default: d)
        guard choices.contains(v) else { throw error(key, "must be one of \(choices.map { "\"\($0)\"" }.joined(separator: ", "))") }
        return v
    }

    /// Throws for the first key that was never read.
    public func finish() throws {
        if let unknown = values.keys.sorted().first(where: { !used.contains($0) }) {
            throw error(unknown, "unknown key")
        }
    }
}
