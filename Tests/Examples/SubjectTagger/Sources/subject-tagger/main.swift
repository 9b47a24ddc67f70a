import Foundation
import Logging
import SluiceRuntime
import TaggingStages

// `subject-tagger [--config pipeline.conf]`: Sluice's gateway, as `sluice run` starts it, with
// one stage more: `subject-tag`, from this package.

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("subject-tagger: \(message)\n".utf8))
    exit(1)
}

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.isEmpty || (arguments.count == 2 && arguments[0] == "--config") else {
    fail("usage: subject-tagger [--config pipeline.conf]")
}

do {
    let config = try GatewayConfig.load(path: arguments.last ?? "pipeline.conf")
    config.bootstrapLogging()                       // stderr at [server] log_level
    var registry = StageRegistry()                  // every built-in stage
    registry.register(SubjectTagStage.factory)      // and ours: `use = "subject-tag"`
    let gateway = try Gateway(config: config, registry: registry, logger: Logger(label: "subject-tagger"))
    try await gateway.run()                         // until SIGTERM or SIGINT
} catch {
    // A ConfigError prints as the file, line and key it is about.
    fail("\(error)")
}
