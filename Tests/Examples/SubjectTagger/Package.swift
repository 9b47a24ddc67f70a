// swift-tools-version:6.0
// A package of its own that uses Sluice as a library: it defines a stage, registers it next to
// the built-in ones, and runs the gateway. See README.md beside this file.
import PackageDescription

let package = Package(
    name: "SubjectTagger",
    platforms: [.macOS(.v14)],
    dependencies: [
        // Sluice, from this repository. In a package of your own, point this at your checkout
        // of Sluice (or its git URL). `name:` keeps the product references below independent
        // of the folder the checkout happens to be in.
        .package(name: "Sluice", path: "../../.."),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // The stage: written against the stage API only, like Sluice's own LocalStages.
        .target(name: "TaggingStages", dependencies: [
            .product(name: "SluiceStageAPI", package: "Sluice"),
        ]),
        // The gateway with the stage registered.
        .executableTarget(name: "subject-tagger", dependencies: [
            "TaggingStages",
            .product(name: "SluiceGateway", package: "Sluice"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "TaggingStagesTests", dependencies: [
            "TaggingStages",
            .product(name: "SluiceStageAPI", package: "Sluice"),
            .product(name: "SluiceStageTesting", package: "Sluice"),
        ]),
    ]
)
