import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Queue ids: 13 hex digits of the microsecond clock and 3 of a counter, e.g. `65F3A2B1C4D5E0A1`.
/// Unique within one spool (one gateway process writes it); sortable by arrival.
public enum QueueID {
    private static let counter = Atomic<UInt32>(0)

    public static func make() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let micros = UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec / 1000)
        let n = counter.add(1, ordering: .relaxed).newValue & 0xFFF
        return hex(micros, digits: 13) + hex(UInt64(n), digits: 3)
    }

    private static func hex(_ value: UInt64, digits: Int) -> String {
        let s = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, digits - s.count)) + s.suffix(digits)
    }

    /// True for a string that can be a queue id (used to refuse path tricks in `queue show`).
    public static func isValid(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 32 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x46) }
    }
}
