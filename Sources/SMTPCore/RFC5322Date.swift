#if canImport(Glibc)
import Glibc
#endif

/// Dates as RFC 5322 section 3.3 writes them: `Sun, 29 Nov 2026 08:30:53 +0000`
/// (Received, Date and Arrival-Date fields).
public enum RFC5322Date {
    public static func format(_ t: time_t) -> String {
        var t = t
        var tm = tm()
        localtime_r(&t, &tm)
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S %z", &tm)
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func now() -> String { format(time(nil)) }
}
