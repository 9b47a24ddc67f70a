import SMTPCore
#if canImport(Glibc)
import Glibc
#endif

/// The recipients of a queued message already resolved by an earlier attempt, kept in
/// `spool/state/<id>` as appended lines (`D <index>` delivered, `F <index> <code> <enhanced> <text>`
/// failed, `W 0` a delay warning was sent), each batch fsync'd. A message whose recipients all
/// resolve in one attempt never gets a state file.
enum DeliveryState {
    typealias Resolution = RecipientResolution

    /// The key under which `load` reports that a delay warning went out.
    static let warnedKey = -1

    static func path(_ layout: SpoolLayout, _ id: String) -> String { layout.state + "/" + id }

    static func load(_ layout: SpoolLayout, _ id: String) throws -> [Int: Resolution] {
        let file = path(layout, id)
        guard FileIO.exists(file) else { return [:] }
        let fd = try FileIO.openRead(file)
        defer { close(fd) }
        let bytes = try FileIO.pread(fd, count: try FileIO.fileSize(fd, path: file), offset: 0, path: file)
        var result: [Int: Resolution] = [:]
        for line in bytes.split(separator: 0x0A) {
            let text = String(decoding: line, as: UTF8.self)
            let parts = text.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count >= 2, let index = Int(parts[1]) else { continue }  // a torn last line
            if parts[0] == "W" {
                result[warnedKey] = .delivered
            } else if parts[0] == "D" {
                result[index] = .delivered
            } else if parts[0] == "F", parts.count == 3, let reply = SMTPReply(parsing: String(parts[2])) {
                result[index] = .failed(reply)
            }
        }
        return result
    }

    static func append(_ layout: SpoolLayout, _ id: String, _ entries: [(Int, Resolution)]) throws {
        var text = ""
        for (index, resolution) in entries {
            switch resolution {
            case .delivered where index == warnedKey: text += "W 0\n"
            case .delivered: text += "D \(index)\n"
            case .failed(let reply): text += "F \(index) \(reply.description.replacingNewlines())\n"
            }
        }
        let file = path(layout, id)
        let fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        try FileIO.check(fd, "open", file)
        defer { close(fd) }
        try FileIO.writeAll(fd, Array(text.utf8), path: file)
        try FileIO.sync(fd, path: file)
    }

    static func remove(_ layout: SpoolLayout, _ id: String) throws {
        let file = path(layout, id)
        if FileIO.exists(file) { try FileIO.unlink(file) }
    }
}

extension String {
    package func replacingNewlines() -> String {
        String(decoding: utf8.map { $0 == 0x0A || $0 == 0x0D ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
    }
}
