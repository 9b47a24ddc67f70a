import Logging
import NIOPosix
import SMTPCore

extension AuthSettings {
    /// Checks credentials on `threadPool` (crypt(3) is slow on purpose). Failures are counted per
    /// client address and answered late; past `[auth] max_failures` the client is dropped.
    func check(
        user: String, password: String, mechanism: SASL.Mechanism, client address: String, threadPool: NIOThreadPool, logger: Logger
    ) async -> SessionStateMachine.AuthResult {
        if failures.count(address) >= failures.maxFailures { return .tooManyFailures }
        let authenticator = self.authenticator
        let ok = (try? await threadPool.runIfActive { authenticator.verify(user: user, password: password) }) ?? false
        if ok {
            logger.info("authenticated", metadata: ["user": "\(user)", "mechanism": "\(mechanism.rawValue)"])
            return .success
        }
        let count = failures.fail(address)
        logger.notice("authentication failed", metadata: ["user": "\(user)", "mechanism": "\(mechanism.rawValue)", "failures": "\(count)"])
        if count >= failures.maxFailures { return .tooManyFailures }
        try? await Task.sleep(for: failures.delay(after: count))
        return .failure
    }
}
