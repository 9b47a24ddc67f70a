import Foundation
import SluiceStageAPI
import TOMLKit

/// A parsed `pipeline.conf`: its tables as `ConfigValue`s, and where each key stands in the file.
public struct ConfigFile {
    public let path: String
    public let root: [String: ConfigValue]
    private let lines: [String: Int]

    /// Reads and parses a TOML file; syntax errors name the file and line.
    public init(path: String) throws {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, line: nil, key: "", message: "cannot read the file: \(error.localizedDescription)")
        }
        try self.init(path: path, text: text)
    }

    public init(path: String, text: String) throws {
        self.path = path
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(file: path, line: error.source.begin.line, key: "", message: "TOML syntax error: \(error.description)")
        }
        self.root = Self.convert(table)
        self.lines = Self.indexLines(text)
    }

    static func convert(_ table: TOMLTable) -> [String: ConfigValue] {
        var out: [String: ConfigValue] = [:]
        for key in table.keys {
            if let v = table[key] { out[key] = convert(v) }
        }
        return out
    }

    static func convert(_ value: any TOMLValueConvertible) -> ConfigValue {
        switch value.type {
        case .string: return .string(value.string ?? "")
        case .int: return .int(value.int ?? 0)
        case .double: return .double(value.double ?? 0)
        case .bool: return .bool(value.bool ?? false)
        case .table: return .table(value.table.map(convert) ?? [:])
        case .array: return .array(value.array.map { $0.map(convert) } ?? [])
        default: return .string(value.debugDescription)
        }
    }

    /// Maps `table.key` (tables of arrays numbered from 1: `stage[2].use`) to line numbers.
    static func indexLines(_ text: String) -> [String: Int] {
        var index: [String: Int] = [:]
        var counts: [String: Int] = [:]
        var current = ""
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[[") , let end = line.range(of: "]]") {
                let name = line[line.index(line.startIndex, offsetBy: 2)..<end.lowerBound].trimmingCharacters(in: .whitespaces)
                counts[name, default: 0] += 1
                current = "\(name)[\(counts[name]!)]"
                index[current] = n + 1
            } else if line.hasPrefix("["), let end = line.firstIndex(of: "]") {
                current = line[line.index(after: line.startIndex)..<end].trimmingCharacters(in: .whitespaces)
                index[current] = n + 1
            } else if let eq = line.firstIndex(of: "="), !line.hasPrefix("#") {
                let key = line[..<eq].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
                let full = current.isEmpty ? key : "\(current).\(key)"
                if index[full] == nil { index[full] = n + 1 }
            }
        }
        return index
    }

    /// The line of `key` in table `table` (`server`, `stage[2]`), or of the table header.
    public func line(table: String, key: String?) -> Int? {
        if let key, let l = lines[table.isEmpty ? key : "\(table).\(key)"] { return l }
        return lines[table]
    }

    /// A table for typed reading with unknown-key detection.
    public func table(_ path: String, _ values: [String: ConfigValue]) -> ConfigTable {
        ConfigTable(path: path, file: self.path, values: values) { [lines] key in
            path.isEmpty ? lines[key] : lines["\(path).\(key)"] ?? lines[path]
        }
    }
}
