import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Fault injection for the recovery tests. With `SLUICE_CRASH_AT=<point>:<n>` in the
/// environment the process kills itself with SIGKILL the n-th time it reaches that point
/// (n defaults to 1); with `SLUICE_FAIL_AT=<point>:<n>` that step fails with EIO instead, as a
/// failing disk would. Unset, each check is a load of a constant.
public enum CrashPoint: String, CaseIterable, Sendable {
    /// Content and envelope written to `tmp/`, not yet fsync'd.
    case spoolWritten = "spool-written"
    /// The temp file is fsync'd, not yet renamed into `queue/`.
    case spoolSynced = "spool-synced"
    /// Renamed into `queue/`, the directory not yet fsync'd.
    case spoolRenamed = "spool-renamed"
    /// Durable in `queue/`; the 250 is not yet sent.
    case spoolCommitted = "spool-committed"
    /// The maildir file is in `new/`, its directory not yet fsync'd.
    case maildirRenamed = "maildir-renamed"
    /// Delivered durably; the queue file not yet removed.
    case delivered = "delivered"

    private static func parse(_ variable: String) -> (CrashPoint, Int)? {
        guard let raw = getenv(variable) else { return nil }
        let parts = String(cString: raw).split(separator: ":")
        guard let first = parts.first, let point = CrashPoint(rawValue: String(first)) else { return nil }
        return (point, parts.count > 1 ? Int(parts[1]) ?? 1 : 1)
    }
    private static let crash = parse("SLUICE_CRASH_AT")
    private static let failure = parse("SLUICE_FAIL_AT")
    private static let crashHits = Atomic<Int>(0)
    private static let failureHits = Atomic<Int>(0)

    /// Kills the process, or fails the step, if this point is armed and its count is reached.
    @inline(__always)
    package static func reached(_ point: CrashPoint) throws {
        if let (armed, count) = crash, armed == point, crashHits.add(1, ordering: .relaxed).newValue >= count {
            kill(getpid(), SIGKILL)
        }
        if let (armed, count) = failure, armed == point, failureHits.add(1, ordering: .relaxed).newValue == count {
            throw FileIOError(call: "injected fault", path: point.rawValue, errno: EIO)
        }
    }
}
