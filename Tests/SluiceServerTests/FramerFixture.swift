import NIOCore
import SMTPCore
import SluiceServer
import Testing

/// A frame as the tests compare it: consecutive data (or BDAT) chunks merged, since how the
/// framer cuts data depends on how the bytes arrived; the data flags captured at each end.
enum Frame: Equatable, Sendable, CustomStringConvertible {
    case command([UInt8])
    case tooLong
    case data([UInt8])
    case dataEnd(MessageDataFlags)
    case bdat([UInt8])
    /// The end of a BDAT chunk; `flags` only after the LAST chunk (the message is complete).
    case bdatEnd(MessageDataFlags?)

    static func cmd(_ s: String) -> Frame { .command(Array(s.utf8)) }
    static func data(_ s: String) -> Frame { .data(Array(s.utf8)) }
    static func bdat(_ s: String) -> Frame { .bdat(Array(s.utf8)) }

    var description: String {
        switch self {
        case .command(let b): "command(\(escaped(b)))"
        case .tooLong: "tooLong"
        case .data(let b): "data(\(escaped(b)))"
        case .dataEnd(let f): "dataEnd(\(f.summary))"
        case .bdat(let b): "bdat(\(escaped(b)))"
        case .bdatEnd(let f): "bdatEnd\(f.map { "(\($0.summary))" } ?? "")"
        }
    }
}

func escaped(_ bytes: [UInt8]) -> String {
    var s = "\""
    var run = 0
    func flushRun() {
        if run > 8 { s += "…×\(run)" }
        run = 0
    }
    for (i, b) in bytes.enumerated() {
        if i > 0 && b == bytes[i - 1] && b >= 0x20 && b < 0x7F {
            run += 1
            if run > 8 { continue }
        } else {
            flushRun()
        }
        switch b {
        case 0x0D: s += "\\r"
        case 0x0A: s += "\\n"
        case 0x00: s += "\\0"
        case 0x20..<0x7F: s += String(UnicodeScalar(b))
        default: s += "\\x" + String(b, radix: 16)
        }
    }
    flushRun()
    return s + "\""
}

func flags(bareCR: Bool = false, bareLF: Bool = false, nul: Bool = false, longLine: Bool = false) -> MessageDataFlags {
    var f = MessageDataFlags()
    f.bareCR = bareCR
    f.bareLF = bareLF
    f.nul = nul
    f.longLine = longLine
    return f
}

let clean = MessageDataFlags()

extension MessageDataFlags {
    var summary: String {
        let set = [(bareCR, "bareCR"), (bareLF, "bareLF"), (nul, "nul"), (longLine, "longLine")].filter(\.0).map(\.1)
        return set.isEmpty ? "clean" : set.joined(separator: ",")
    }
}

/// Feeds bytes to an `SMTPFramer` and does what the session would between frames: DATA
/// switches to data mode (as if the 354 was sent), BDAT reads its chunk.
struct FramerDriver {
    var framer: SMTPFramer
    var buffer = ByteBuffer()
    private(set) var frames: [Frame] = []
    private var bdatLast = false
    private var inBDATMessage = false

    init(commandLineLimit: Int = 512, textLineLimit: Int = 1000) {
        framer = SMTPFramer(commandLineLimit: commandLineLimit, textLineLimit: textLineLimit)
    }

    mutating func feed(_ bytes: [UInt8]) {
        buffer.writeBytes(bytes)
        while let frame = framer.next(&buffer) { record(frame) }
    }

    mutating func feed(_ s: String) { feed(Array(s.utf8)) }

    private mutating func record(_ frame: SMTPFrame) {
        switch frame {
        case .command(let line):
            frames.append(.command(line))
            switch try? SMTPCommandParser().parse(line) {
            case .data?:
                framer.beginData()
            case .bdat(let size, let last)?:
                if !inBDATMessage {
                    framer.startMessage()
                    inBDATMessage = true
                }
                bdatLast = last
                framer.beginBDAT(size: size)
            default:
                break
            }
        case .commandTooLong:
            frames.append(.tooLong)
        case .dataChunk(let chunk):
            let bytes = Array(chunk.readableBytesView)
            if case .data(let previous)? = frames.last {
                frames[frames.count - 1] = .data(previous + bytes)
            } else {
                frames.append(.data(bytes))
            }
        case .dataEnd:
            frames.append(.dataEnd(framer.flags))
        case .bdatChunk(let chunk):
            let bytes = Array(chunk.readableBytesView)
            if case .bdat(let previous)? = frames.last {
                frames[frames.count - 1] = .bdat(previous + bytes)
            } else {
                frames.append(.bdat(bytes))
            }
        case .bdatEnd:
            if bdatLast {
                framer.finishBDATMessage()
                inBDATMessage = false
                frames.append(.bdatEnd(framer.flags))
            } else {
                frames.append(.bdatEnd(nil))
            }
        }
    }
}

/// How the input reaches the framer.
enum Delivery: Sendable, CustomStringConvertible {
    case whole
    case byteByByte
    /// Two reads, split after `at` octets.
    case split(at: Int)

    var description: String {
        switch self {
        case .whole: "in one read"
        case .byteByByte: "byte by byte"
        case .split(let at): "split after \(at) octets"
        }
    }

    func frames(_ input: [UInt8], commandLineLimit: Int, textLineLimit: Int) -> [Frame] {
        var driver = FramerDriver(commandLineLimit: commandLineLimit, textLineLimit: textLineLimit)
        switch self {
        case .whole:
            driver.feed(input)
        case .byteByByte:
            for b in input { driver.feed([b]) }
        case .split(let at):
            driver.feed(Array(input[..<at]))
            driver.feed(Array(input[at...]))
        }
        return driver.frames
    }
}

/// One row of a framer table: the bytes a client sends and the frames they must give, however
/// the bytes are cut into reads. Rows whose input ends mid-frame are the "needs more bytes" rows:
/// the frames stop where the input stops being complete.
struct FramerFixture: Sendable, CustomTestStringConvertible {
    var name: String
    var input: [UInt8]
    var expected: [Frame]
    var commandLineLimit = 512
    var textLineLimit = 1000
    var sourceLocation: SourceLocation

    init(
        _ name: String, _ input: [UInt8], _ expected: [Frame], commandLineLimit: Int = 512, textLineLimit: Int = 1000,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        self.name = name
        self.input = input
        self.expected = expected
        self.commandLineLimit = commandLineLimit
        self.textLineLimit = textLineLimit
        self.sourceLocation = sourceLocation
    }

    init(
        _ name: String, _ input: String, _ expected: [Frame], commandLineLimit: Int = 512, textLineLimit: Int = 1000,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        self.init(name, Array(input.utf8), expected, commandLineLimit: commandLineLimit, textLineLimit: textLineLimit, sourceLocation: sourceLocation)
    }

    var testDescription: String { name }

    func frames(_ delivery: Delivery) -> [Frame] {
        delivery.frames(input, commandLineLimit: commandLineLimit, textLineLimit: textLineLimit)
    }

    /// Where to split the input into two reads: everywhere in short inputs; in long ones, around
    /// every octet that matters to framing (CR, LF, dot, NUL) and every 64th octet, which keeps
    /// the check cheap without missing a boundary that can change the frames.
    var splitPoints: [Int] {
        guard input.count > 1 else { return [] }
        guard input.count > 256 else { return Array(1..<input.count) }
        var points = Set(stride(from: 1, to: input.count, by: 64))
        for (i, b) in input.enumerated() where b == 0x0D || b == 0x0A || b == UInt8(ascii: ".") || b == 0 {
            for at in (i - 1)...(i + 2) where at > 0 && at < input.count { points.insert(at) }
        }
        for at in [commandLineLimit - 1, commandLineLimit, commandLineLimit + 1] where at > 0 && at < input.count { points.insert(at) }
        return points.sorted()
    }

    /// Whole, byte by byte, and splits into two reads must all give the expected frames.
    func check() {
        let whole = frames(.whole)
        #expect(whole == expected, "in one read", sourceLocation: sourceLocation)
        #expect(frames(.byteByByte) == whole, "byte by byte differs from one read", sourceLocation: sourceLocation)
        var firstBadSplit: Int?
        for at in splitPoints where frames(.split(at: at)) != whole {
            firstBadSplit = at
            break
        }
        #expect(firstBadSplit == nil, "two reads split after \(firstBadSplit ?? 0) octets differ from one read", sourceLocation: sourceLocation)
    }
}
