import NIOCore

/// A unit the framer cut from the byte stream.
public enum SMTPFrame: Equatable, Sendable {
    /// A command line without its CRLF. It may contain bare CR/LF or NUL; the parser refuses those.
    case command([UInt8])
    /// A command line longer than the limit; its bytes were dropped up to and including the CRLF.
    case commandTooLong
    /// Message data after DATA, dot-unstuffed (RFC 5321 4.5.2).
    case dataChunk(ByteBuffer)
    /// The CRLF.CRLF that ends DATA was read.
    case dataEnd
    /// Octets of a BDAT chunk (RFC 3030), as sent.
    case bdatChunk(ByteBuffer)
    /// The announced BDAT octets have all been read.
    case bdatEnd
}

/// What was wrong with message data, found while it streamed. Any of these refuses the message.
public struct MessageDataFlags: Equatable, Sendable {
    /// A CR not followed by LF (RFC 5321 2.3.8).
    public var bareCR = false
    /// An LF not preceded by CR.
    public var bareLF = false
    public var nul = false
    /// A line longer than the text line limit (RFC 5321 4.5.3.1.6).
    public var longLine = false

    public init() {}

    public var isClean: Bool { !bareCR && !bareLF && !nul && !longLine }
}

/// Cuts the inbound byte stream into command lines, DATA content and BDAT chunks.
///
/// Only CRLF ends a line: a bare LF or CR never ends a command or the data, so the smuggling
/// sequences `\n.\n`, `\r.\r`, `\n.\r\n`, `\r\n.\n` and friends are just data (and flagged).
/// Memory stays bounded: an over-long command line is discarded as it arrives.
public struct SMTPFramer: Sendable {
    private enum Mode: Equatable, Sendable {
        case command
        case discardingLine
        case data
        /// The end of data was read after a chunk that is still to be handed out.
        case dataEnded
        case bdat(remaining: UInt64)
    }

    private var mode: Mode = .command
    /// Octets of a command line including CRLF (`[server] command_line_limit`, RFC 5321: 512).
    public var commandLineLimit: Int
    /// Octets of a text line including CRLF (`[server] text_line_limit`, RFC 5321: 1000).
    public var textLineLimit: Int
    /// Problems in the current message's data so far.
    public private(set) var flags = MessageDataFlags()
    // Line tracking inside message data.
    private var atLineStart = true
    private var lineLength = 0
    private var lastWasCR = false

    public init(commandLineLimit: Int = 512, textLineLimit: Int = 1000) {
        self.commandLineLimit = commandLineLimit
        self.textLineLimit = textLineLimit
    }

    public var isReadingCommands: Bool { mode == .command || mode == .discardingLine }

    /// True while message data (DATA content or a BDAT chunk) is being read.
    public var isReadingData: Bool { !isReadingCommands }

    /// Starts a new message: clears the data flags and line state.
    public mutating func startMessage() {
        flags = MessageDataFlags()
        atLineStart = true
        lineLength = 0
        lastWasCR = false
    }

    /// After the 354: the following bytes are message data up to CRLF.CRLF.
    public mutating func beginData() {
        startMessage()
        mode = .data
    }

    /// After a BDAT command: the next `size` octets are a chunk (read even if the command was refused).
    public mutating func beginBDAT(size: UInt64) {
        mode = .bdat(remaining: size)
    }

    /// The next frame, or nil when more bytes are needed.
    public mutating func next(_ buffer: inout ByteBuffer) -> SMTPFrame? {
        switch mode {
        case .command: return nextCommand(&buffer)
        case .discardingLine: return discard(&buffer)
        case .data: return nextData(&buffer)
        case .dataEnded:
            mode = .command
            return .dataEnd
        case .bdat(let remaining): return nextBDAT(&buffer, remaining: remaining)
        }
    }

    /// Offset of the LF of the first CRLF in the readable bytes.
    private static func crlf(_ buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { raw -> Int? in
            var from = 0
            while from < raw.count {
                guard let lf = raw[from...].firstIndex(of: 0x0A) else { return nil }
                if lf > 0 && raw[lf - 1] == 0x0D { return lf }
                from = lf + 1
            }
            return nil
        }
    }

    private mutating func nextCommand(_ buffer: inout ByteBuffer) -> SMTPFrame? {
        if let lf = Self.crlf(buffer) {
            let length = lf + 1
            if length > commandLineLimit {
                buffer.moveReaderIndex(forwardBy: length)
                return .commandTooLong
            }
            let line = buffer.readBytes(length: length - 2)!
            buffer.moveReaderIndex(forwardBy: 2)
            return .command(line)
        }
        if buffer.readableBytes > commandLineLimit {
            mode = .discardingLine
            return discard(&buffer)
        }
        return nil
    }

    private mutating func discard(_ buffer: inout ByteBuffer) -> SMTPFrame? {
        if let lf = Self.crlf(buffer) {
            buffer.moveReaderIndex(forwardBy: lf + 1)
            mode = .command
            return .commandTooLong
        }
        // Keep a trailing CR: it may pair with the next read's LF.
        let keep = buffer.readableBytesView.last == 0x0D ? 1 : 0
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes - keep)
        buffer.discardReadBytes()
        return nil
    }

    private mutating func noteLineEnd() {
        if lineLength + 2 > textLineLimit { flags.longLine = true }
        lineLength = 0
    }

    /// DATA: unstuffs leading dots, flags bad line ends, and stops at CRLF.CRLF.
    private mutating func nextData(_ buffer: inout ByteBuffer) -> SMTPFrame? {
        var out = ByteBufferAllocator().buffer(capacity: buffer.readableBytes)
        var ended = false
        let consumed = buffer.withUnsafeReadableBytes { raw -> Int in
            let n = raw.count
            var i = 0
            var segmentStart = 0
            func emit(_ end: Int) {
                if end > segmentStart { out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[segmentStart..<end])) }
            }
            while i < n {
                if atLineStart && raw[i] == UInt8(ascii: ".") {
                    guard i + 1 < n else { break }  // need to see what follows the dot
                    if raw[i + 1] == 0x0D {
                        guard i + 2 < n else { break }
                        if raw[i + 2] == 0x0A {
                            emit(i)
                            ended = true
                            return i + 3
                        }
                    }
                    // Dot-stuffed line: drop the first dot.
                    emit(i)
                    segmentStart = i + 1
                    atLineStart = false
                    lineLength = 0  // the stuffing dot does not count (RFC 5321 4.5.3.1.6)
                    i += 1
                    continue
                }
                let b = raw[i]
                if b == 0x0D {
                    guard i + 1 < n else { break }  // CR at the end: wait for the next byte
                    if raw[i + 1] == 0x0A {
                        noteLineEnd()
                        atLineStart = true
                        i += 2
                        continue
                    }
                    flags.bareCR = true
                } else if b == 0x0A {
                    flags.bareLF = true
                } else if b == 0 {
                    flags.nul = true
                }
                atLineStart = false
                lineLength += 1
                i += 1
            }
            emit(i)
            return i
        }
        buffer.moveReaderIndex(forwardBy: consumed)
        if ended {
            if out.readableBytes > 0 {
                // Hand out the data first; the end comes on the next call.
                mode = .dataEnded
                return .dataChunk(out)
            }
            mode = .command
            return .dataEnd
        }
        return out.readableBytes > 0 ? .dataChunk(out) : nil
    }

    private mutating func nextBDAT(_ buffer: inout ByteBuffer, remaining: UInt64) -> SMTPFrame? {
        if remaining == 0 {
            mode = .command
            return .bdatEnd
        }
        guard buffer.readableBytes > 0 else { return nil }
        let take = Int(min(UInt64(buffer.readableBytes), remaining))
        let chunk = buffer.readSlice(length: take)!
        scanLines(chunk)
        mode = .bdat(remaining: remaining - UInt64(take))
        return .bdatChunk(chunk)
    }

    /// Line checks for BDAT content (no dot handling; CRLF may straddle chunks).
    private mutating func scanLines(_ chunk: ByteBuffer) {
        chunk.withUnsafeReadableBytes { raw in
            for b in raw {
                if lastWasCR {
                    lastWasCR = false
                    if b == 0x0A {
                        noteLineEnd()
                        continue
                    }
                    flags.bareCR = true
                    lineLength += 1
                }
                if b == 0x0D {
                    lastWasCR = true
                    continue
                }
                if b == 0x0A { flags.bareLF = true }
                if b == 0 { flags.nul = true }
                lineLength += 1
            }
        }
    }

    /// At the end of a BDAT message: a CR left dangling at the very end is a bare CR.
    public mutating func finishBDATMessage() {
        if lastWasCR {
            flags.bareCR = true
            lastWasCR = false
        }
        if lineLength + 2 > textLineLimit { flags.longLine = true }
    }
}
