import Foundation
import PackagePlugin

/// Finds the Stage types of the target it is applied to and generates `<Target>Registry.all`,
/// so a new stage is usable in `pipeline.conf` after a rebuild, with no edit to core code.
@main
struct StageRegistration: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let module = target as? SourceModuleTarget else { return [] }
        let inputs = module.sourceFiles(withSuffix: "swift").map(\.url)
        let output = context.pluginWorkDirectoryURL.appending(path: "\(target.name)Registry.swift")
        return [
            .buildCommand(
                displayName: "Registering the stages of \(target.name)",
                executable: try context.tool(named: "StageRegistryGenerator").url,
                arguments: [output.path, "\(target.name)Registry"] + inputs.map(\.path),
                inputFiles: inputs,
                outputFiles: [output]
            ),
        ]
    }
}
