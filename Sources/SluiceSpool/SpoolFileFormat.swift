import Foundation

/// The queue file: message content from offset 0, then the envelope as JSON, then a fixed-size
/// trailer `\nSLUICE-ENVELOPE <20-digit offset of the JSON>\n`. The trailer is written last, so a
/// file without a valid one was never completed.
public enum SpoolFileFormat {
    static let marker = Array("\nSLUICE-ENVELOPE ".utf8)
    static let trailerSize = marker.count + 20 + 1

    static func trailer(envelopeOffset: Int) -> [UInt8] {
        let digits = String(envelopeOffset)
        return marker + Array((String(repeating: "0", count: 20 - digits.count) + digits).utf8) + [0x0A]
    }

    package static func encodeEnvelope(_ envelope: SpoolEnvelope) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(envelope))
    }

    /// Reads the envelope of an open queue file; returns it with the content length.
    static func readEnvelope(fd: Int32, path: String) throws -> (SpoolEnvelope, Int) {
        let size = try FileIO.fileSize(fd, path: path)
        guard size >= trailerSize else { throw SpoolError.corrupt(path, "too short") }
        let tail = try FileIO.pread(fd, count: trailerSize, offset: size - trailerSize, path: path)
        guard tail.count == trailerSize, Array(tail.prefix(marker.count)) == marker, tail.last == 0x0A,
              let offset = Int(String(decoding: tail[marker.count..<(trailerSize - 1)], as: UTF8.self)),
              offset >= 0, offset <= size - trailerSize
        else { throw SpoolError.corrupt(path, "no valid trailer") }
        let json = try FileIO.pread(fd, count: size - trailerSize - offset, offset: offset, path: path)
        do {
            return (try JSONDecoder().decode(SpoolEnvelope.self, from: Data(json)), offset)
        } catch {
            throw SpoolError.corrupt(path, "bad envelope: \(error)")
        }
    }
}

/// Spool failures.
public enum SpoolError: Error, CustomStringConvertible {
    case corrupt(String, String)
    case notFound(String)

    public var description: String {
        switch self {
        case .corrupt(let path, let why): "corrupt queue file \(path): \(why)"
        case .notFound(let id): "no such message: \(id)"
        }
    }
}
