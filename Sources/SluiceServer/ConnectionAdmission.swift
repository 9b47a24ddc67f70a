import Logging
import NIOCore
import SMTPCore
import SluiceStageAPI

/// Which connections the gateway takes, and its count of the ones it holds.
extension ServerContext {
    /// Admits a new connection: nil when it may go on (it then counts against its client's
    /// limit and hears about shutdown, until `release`), else the 421 it is closed with.
    func admit(_ channel: any Channel, client: String, logger: Logger) -> SMTPReply? {
        guard tracker.open(client) else {
            logger.notice("connection refused: too many connections")
            return SMTPReply(421, "4.7.0", "\(session.hostname) Error: too many connections")
        }
        register(channel)
        // Registered first: a shutdown that begins now cannot miss it.
        guard !isShuttingDown else {
            tracker.close(client)
            unregister(channel)
            return SMTPReply(421, "4.3.2", "\(session.hostname) Service shutting down")
        }
        return nil
    }

    /// An admitted connection ended: its count goes, and `disconnect` stages hear of it.
    func release(_ channel: any Channel, client: String, session info: SessionInfo?) {
        tracker.close(client)
        unregister(channel)
        if chain.hooks(.disconnect), let info {
            let chain = self.chain
            Task { await chain.disconnect(session: info) }
        }
    }
}
