#if canImport(Glibc)
import Glibc
#endif

/// Queue operations of `sluice queue`, done on the spool directly so they work whether the
/// gateway runs or not. A running gateway learns of `flush` and `release` through marker files
/// in `spool/control/` (`flush`, `flush-<ID>`), which it polls every 250 ms.
public enum QueueControl {
    public enum Failure: Error, CustomStringConvertible {
        case noSuchMessage(String)
        public var description: String {
            switch self {
            case .noSuchMessage(let id): "no message \(id) in the queue"
            }
        }
    }

    /// Asks the running gateway to attempt deferred mail now (one message, or all).
    public static func requestFlush(_ layout: SpoolLayout, id: String? = nil) throws {
        try layout.create()
        if let id, !QueueID.isValid(id) || !FileIO.exists(layout.queueFile(id)) { throw Failure.noSuchMessage(id) }
        let marker = layout.control + "/" + (id.map { "flush-\($0)" } ?? "flush")
        let fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        try FileIO.check(fd, "open", marker)
        close(fd)
    }

    /// Deletes a message from the queue or from hold, with its delivery state.
    public static func delete(_ layout: SpoolLayout, id: String) throws {
        guard QueueID.isValid(id) else { throw Failure.noSuchMessage(id) }
        let candidates = [layout.queueFile(id), layout.hold + "/" + id, layout.quarantineFile(id)]
        guard let path = candidates.first(where: FileIO.exists) else { throw Failure.noSuchMessage(id) }
        try FileIO.unlink(path)
        try DeliveryState.remove(layout, id)
    }

    /// Moves a queued message to `hold/`: it is not delivered until released.
    public static func hold(_ layout: SpoolLayout, id: String) throws {
        guard QueueID.isValid(id), FileIO.exists(layout.queueFile(id)) else { throw Failure.noSuchMessage(id) }
        try FileIO.rename(layout.queueFile(id), layout.hold + "/" + id)
    }

    /// Moves a held (or quarantined) message back to the queue and asks for its delivery now.
    public static func release(_ layout: SpoolLayout, id: String) throws {
        guard QueueID.isValid(id) else { throw Failure.noSuchMessage(id) }
        let from = [layout.hold + "/" + id, layout.quarantineFile(id)].first(where: FileIO.exists)
        guard let from else { throw Failure.noSuchMessage(id) }
        try FileIO.rename(from, layout.queueFile(id))
        try requestFlush(layout, id: id)
    }

    /// Takes the pending requests (and removes their markers): `nil` in the list means "flush all".
    public static func takeRequests(_ layout: SpoolLayout) -> [String?] {
        let names = (try? FileIO.list(layout.control)) ?? []
        var requests: [String?] = []
        for name in names {
            try? FileIO.unlink(layout.control + "/" + name)
            if name == "flush" { requests.append(nil) }
            else if name.hasPrefix("flush-"), QueueID.isValid(String(name.dropFirst(6))) { requests.append(String(name.dropFirst(6))) }
        }
        return requests
    }
}
