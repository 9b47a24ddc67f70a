import Logging

extension GatewayConfig {
    /// Sends every logger's output to standard error at `[server] log_level` (default "info"),
    /// as `sluice run` does. Call once, before the first logger is made.
    public func bootstrapLogging() {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
