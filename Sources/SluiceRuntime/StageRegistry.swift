import Logging
import SluicePipeline
import SluiceStageAPI
import LocalStages
import SluiceStages

/// The stages `pipeline.conf` can name, by `use`.
public struct StageRegistry: Sendable {
    private var factories: [String: StageFactory] = [:]
    public private(set) var names: [String] = []

    /// By default every built-in stage and every stage of `LocalStages`, as `sluice run` has
    /// them; a program of your own adds its stages with `register(_:)`.
    public init(_ factories: [StageFactory] = BuiltinStages.all + LocalStages.all) {
        for f in factories { register(f) }
    }

    /// Makes `factory` available as `use = "<factory.name>"`; a factory of a name already
    /// registered replaces it.
    public mutating func register(_ factory: StageFactory) {
        if factories[factory.name] == nil { names.append(factory.name) }
        factories[factory.name] = factory
    }

    public func factory(_ name: String) -> StageFactory? { factories[name] }

    /// Makes every configured stage and the checked chain.
    /// - Parameter sharedState: a cluster's shared state, for the stages that keep some.
    public func buildChain(
        _ config: GatewayConfig, logger: Logger, resolver: any DNSResolver = NoResolver(), sharedState: (any SharedState)? = nil
    ) throws -> StageChain {
        var entries: [StageEntry] = []
        for spec in config.stages {
            guard let factory = factories[spec.kind] else {
                throw spec.table.error("use", "unknown stage '\(spec.kind)' (known: \(names.joined(separator: ", ")))")
            }
            var stageLogger = logger
            stageLogger[metadataKey: "stage"] = "\(spec.name)"
            let environment = StageEnvironment(
                hostname: config.hostname, configDirectory: config.directory, logger: stageLogger, resolver: resolver,
                sharedState: sharedState
            )
            let stage = try factory.makeStage(config: spec.table, environment: environment)
            try spec.table.finish()
            entries.append(StageEntry(name: spec.name, kind: spec.kind, stage: stage, timeout: spec.timeout, onError: spec.onError))
        }
        do {
            return try StageChain(entries)
        } catch {
            throw ConfigError(file: config.file, line: nil, key: "stage", message: error.message)
        }
    }
}
