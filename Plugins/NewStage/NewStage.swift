import Foundation
import PackagePlugin

/// `swift package --allow-writing-to-package-directory new-stage SubjectFilter`: a new stage in the
/// local stages target (its source with the config documentation stub in its doc comment) and
/// its test. The StageRegistration plugin registers it on the next build.
@main
struct NewStage: CommandPlugin {
    func performCommand(context: PluginContext, arguments: [String]) async throws {
        var args = ArgumentExtractor(arguments)
        let targetName = args.extractOption(named: "target").first ?? "LocalStages"
        guard let rawName = args.remainingArguments.first, !rawName.isEmpty else {
            throw Failure("usage: swift package --allow-writing-to-package-directory new-stage NAME [--target LocalStages]")
        }
        let base = rawName.hasSuffix("Stage") ? String(rawName.dropLast(5)) : rawName
        guard let first = base.first, first.isLetter, base.allSatisfy({ $0.isLetter || $0.isNumber }) else {
            throw Failure("'\(rawName)' is not a Swift type name (letters and digits, starting with a letter)")
        }
        let type = base.prefix(1).uppercased() + base.dropFirst() + "Stage"
        // greylist, rate-limit style: lowercase words joined by "-".
        var use = ""
        for (i, c) in base.enumerated() {
            if c.isUppercase && i > 0 { use += "-" }
            use += c.lowercased()
        }
        let root = context.package.directoryURL
        let source = root.appending(path: "Sources/\(targetName)/\(type).swift")
        let testDir = root.appending(path: "Tests/\(targetName)Tests")
        let test = testDir.appending(path: "\(type)Tests.swift")
        let fm = FileManager.default
        guard fm.fileExists(atPath: root.appending(path: "Sources/\(targetName)").path) else {
            throw Failure("no target directory Sources/\(targetName)")
        }
        for url in [source, test] where fm.fileExists(atPath: url.path) {
            throw Failure("\(url.path) exists already")
        }
        try fm.createDirectory(at: testDir, withIntermediateDirectories: true)
        try Self.stage(type: type, use: use).write(to: source, atomically: true, encoding: .utf8)
        try Self.test(type: type, target: targetName).write(to: test, atomically: true, encoding: .utf8)
        print("""
        created \(source.path)
        created \(test.path)
        Enable it in pipeline.conf and rebuild (the StageRegistration plugin registers it):

        [[stage]]
        use = "\(use)"
        """)
    }

    static func stage(type: String, use: String) -> String {
        """
        import SluiceStageAPI

        /// `use = "\(use)"`: describe what the stage does here.
        ///
        /// ```toml
        /// [[stage]]
        /// use = "\(use)"
        /// reject_subject = "forbidden"
        /// ```
        ///
        /// Keys:
        /// - `reject_subject` (default ""): messages whose Subject contains this text are refused
        ///   with 550 5.7.1 (an example to replace with your own keys).
        public struct \(type): Stage {
            let rejectSubject: String

            public var phases: Set<StagePhase> { [.endOfMessage] }

            public static let factory = StageFactory(name: "\(use)", summary: "describe the stage in one line") { config, _ in
                try \(type)(config: config)
            }

            public init(config: ConfigTable) throws {
                rejectSubject = try config.string("reject_subject", default: "")
            }

            public func endOfMessage(_ message: MessageView, session: SessionInfo, transaction: TransactionInfo) async throws -> StageDecision {
                if !rejectSubject.isEmpty, message.values(of: "Subject").contains(where: { $0.contains(rejectSubject) }) {
                    return StageDecision(.reject(550, "5.7.1", "Message refused by \(use)"))
                }
                return StageDecision()
            }
        }

        """
    }

    static func test(type: String, target: String) -> String {
        """
        import \(target)
        import SluiceStageAPI
        import SluiceStageTesting
        import Testing

        @Suite("\(type)")
        struct \(type)Tests {
            @Test func refusesTheConfiguredSubject() async throws {
                let stage = try \(type)(config: .testing(["reject_subject": .string("forbidden")]))
                var h = StageHarness(stage: stage)
                let ok = try await h.message("Subject: hello\\n\\nbody\\n", to: ["user@example.test"])
                #expect(ok.decision.verdict == .continue)
                let refused = try await h.message("Subject: forbidden fruit\\n\\nbody\\n", to: ["user@example.test"])
                #expect(refused.decision.verdict != .continue)
            }
        }

        """
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }
}
