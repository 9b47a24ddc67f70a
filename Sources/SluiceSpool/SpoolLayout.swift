/// The folders of a spool root: `tmp/` (being written; cleared at start), `queue/` (accepted,
/// waiting for delivery), `quarantine/` (held by a stage's verdict), `corrupt/` (unreadable files),
/// `free/` (retired files kept for reuse), `state/` (delivery progress), `hold/` (held by the
/// operator), `control/` (requests from `sluice queue` to the running gateway).
public struct SpoolLayout: Sendable {
    public let root: String

    public init(root: String) { self.root = root }

    public var tmp: String { root + "/tmp" }
    public var queue: String { root + "/queue" }
    public var quarantine: String { root + "/quarantine" }
    public var corrupt: String { root + "/corrupt" }
    /// Retired spool files kept for reuse (see `FilePool`).
    public var free: String { root + "/free" }
    /// Messages put on hold by `sluice queue hold`.
    public var hold: String { root + "/hold" }
    /// Requests to the running gateway from `sluice queue` (see `QueueControl`).
    public var control: String { root + "/control" }
    /// Per-message delivery progress (see `DeliveryState`).
    public var state: String { root + "/state" }

    public func queueFile(_ id: String) -> String { queue + "/" + id }
    public func quarantineFile(_ id: String) -> String { quarantine + "/" + id }
    public func tmpFile(_ id: String) -> String { tmp + "/" + id }

    /// Creates the folders (and the root) when missing.
    public func create() throws {
        for dir in [root, tmp, queue, quarantine, corrupt, free, state, hold, control] { try FileIO.makeDirectories(dir) }
    }
}
