import Logging

/// What the gateway gives a stage when it is created.
public struct StageEnvironment: Sendable {
    /// The gateway's hostname (`[server] hostname`).
    public var hostname: String
    /// The directory of `pipeline.conf`; relative paths in stage keys resolve against it.
    public var configDirectory: String
    /// A logger labelled with the stage's name.
    public var logger: Logger
    /// The gateway's DNS resolver (`[dns]`), with its cache and timeouts.
    public var resolver: any DNSResolver
    /// State shared by every node of a cluster (`[cluster]`); nil on a single node.
    public var sharedState: (any SharedState)?

    public init(
        hostname: String, configDirectory: String, logger: Logger, resolver: any DNSResolver = NoResolver(),
        sharedState: (any SharedState)? = nil
    ) {
        self.hostname = hostname
        self.configDirectory = configDirectory
        self.logger = logger
        self.resolver = resolver
        self.sharedState = sharedState
    }

    /// Resolves a path from the config against the config file's directory.
    public func resolvePath(_ path: String) -> String {
        path.hasPrefix("/") ? path : configDirectory + "/" + path
    }
}

/// Makes a stage from its `[[stage]]` table; registered under the name `use = "..."` selects.
public struct StageFactory: Sendable {
    /// The name used in `pipeline.conf` (`use = "access"`).
    public var name: String
    /// One line for `check-config` and the README.
    public var summary: String
    private let make: @Sendable (ConfigTable, StageEnvironment) throws -> any Stage

    public init(name: String, summary: String, make: @escaping @Sendable (ConfigTable, StageEnvironment) throws -> any Stage) {
        self.name = name
        self.summary = summary
        self.make = make
    }

    /// Reads the stage's own keys from `config` (the common keys `use`, `name`, `timeout_ms`
    /// and `on_error` are read by the gateway) and returns the stage.
    public func makeStage(config: ConfigTable, environment: StageEnvironment) throws -> any Stage {
        try make(config, environment)
    }
}
