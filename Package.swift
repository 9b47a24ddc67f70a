// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Sluice",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "sluice", targets: ["sluice"]),
        /// The public API for stage authors: depend on this to write a stage.
        .library(name: "SluiceStageAPI", targets: ["SluiceStageAPI"]),
        /// Drive a stage through a session in unit tests, without sockets.
        .library(name: "SluiceStageTesting", targets: ["SluiceStageTesting"]),
        /// The gateway as a library: load a config, register your own stages, run it.
        .library(name: "SluiceGateway", targets: ["SluiceRuntime"]),
        .plugin(name: "NewStage", targets: ["NewStage"]),
        .plugin(name: "StageRegistration", targets: ["StageRegistration"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        .target(name: "SMTPCore"),
        .systemLibrary(name: "CUnbound", providers: [.apt(["libunbound-dev"])]),
        .systemLibrary(name: "CSPF2", providers: [.apt(["libspf2-dev"])]),
        .systemLibrary(name: "CCrypt", providers: [.apt(["libcrypt-dev"])]),
        .systemLibrary(name: "COpenDKIM", providers: [.apt(["libopendkim-dev"])]),
        .systemLibrary(name: "COpenDMARC", providers: [.apt(["libopendmarc-dev"])]),
        .systemLibrary(name: "CMilter", providers: [.apt(["libmilter-dev"])]),
        /// Keeps libopendkim's decoded public keys (see key_cache.c).
        .target(name: "CDKIMKeyCache", linkerSettings: [.linkedLibrary("crypto")]),
        .target(name: "SluiceDNS", dependencies: ["CUnbound", "SluiceStageAPI"]),
        .executableTarget(name: "StageRegistryGenerator"),
        .plugin(name: "StageRegistration", capability: .buildTool(), dependencies: ["StageRegistryGenerator"]),
        .plugin(
            name: "NewStage",
            capability: .command(
                intent: .custom(verb: "new-stage", description: "Scaffold a stage, its test and its config documentation in the local stages target"),
                permissions: [.writeToPackageDirectory(reason: "writes the new stage's source and test files")]
            )
        ),
        .target(name: "LocalStages", dependencies: [
            "SluiceStageAPI",
            .product(name: "GRDB", package: "GRDB.swift"),
        ], plugins: ["StageRegistration"]),
        .target(name: "SluiceStageTesting", dependencies: [
            "SMTPCore", "SluiceStageAPI", "SluicePipeline", "SluiceDNS",
            .product(name: "Logging", package: "swift-log"),
        ]),
        /// The message vocabulary: header fields and sections, bodies, trace entries.
        .target(name: "SluiceMessage"),
        .target(name: "SluiceStageAPI", dependencies: [
            "SMTPCore", "SluiceMessage",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "SluicePipeline", dependencies: [
            "SMTPCore", "SluiceStageAPI",
            .product(name: "Logging", package: "swift-log"),
        ]),
        /// The durable queue: drafts, commits, recovery, and the `QueueStore` seam.
        .target(name: "SluiceSpool", dependencies: [
            "SMTPCore", "SluiceMessage",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        /// Delivery: the scheduler and the transports (maildir, SMTP/LMTP relay, MX), bounces and
        /// notices; it reaches the queue only through `QueueStore`.
        .target(name: "SluiceDelivery", dependencies: [
            "SMTPCore", "SluiceMessage", "SluiceStageAPI", "SluiceSpool",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        /// Cluster mode (`[cluster]`): the queue and shared state in PostgreSQL.
        .target(name: "SluiceCluster", dependencies: [
            "SMTPCore", "SluiceMessage", "SluiceSpool", "SluiceStageAPI",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "PostgresNIO", package: "postgres-nio"),
        ]),
        .target(name: "SluiceServer", dependencies: [
            "SMTPCore", "SluiceStageAPI", "SluicePipeline", "SluiceSpool", "CCrypt",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "SluiceStages", dependencies: [
            "SMTPCore", "SluiceStageAPI", "CSPF2", "COpenDKIM", "COpenDMARC", "CDKIMKeyCache",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ], plugins: ["StageRegistration"]),
        .target(name: "SluiceRuntime", dependencies: [
            "SMTPCore", "SluiceStageAPI", "SluicePipeline", "SluiceSpool", "SluiceDelivery", "SluiceServer", "SluiceStages", "SluiceDNS", "LocalStages",
            "SluiceCluster",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "TOMLKit", package: "TOMLKit"),
        ]),
        .target(name: "SluiceMilterServer", dependencies: [
            "CMilter", "SMTPCore", "SluiceStageAPI", "SluicePipeline", "SluiceSpool",
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "sluice", dependencies: [
            "SluiceRuntime", "SluiceMilterServer", "SluiceSpool", "SluiceDelivery", "SluiceStageAPI", "SluicePipeline", "SluiceDNS", "SluiceStages", "SluiceServer",
            "SluiceCluster",
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "_CryptoExtras", package: "swift-crypto"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "SMTPCoreTests", dependencies: ["SMTPCore"]),
        .testTarget(name: "SluiceClusterTests", dependencies: ["SluiceCluster"]),
        .testTarget(name: "LocalStagesTests", dependencies: ["LocalStages", "SluiceStageAPI", "SluiceStageTesting", "SluiceDNS"]),
        .testTarget(name: "SluiceStageTestingTests", dependencies: ["SluiceStageTesting", "SluiceStages", "SluiceStageAPI", "SluiceDNS", "SMTPCore"]),
        .testTarget(name: "SluiceServerTests", dependencies: [
            "SluiceServer", "SluiceSpool", "SMTPCore", "SluiceStageAPI",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .testTarget(name: "SluiceDNSTests", dependencies: ["SluiceDNS", "SluiceStageAPI"]),
        .testTarget(name: "SluicePipelineTests", dependencies: ["SluicePipeline", "SluiceStageAPI", "SMTPCore"]),
        .testTarget(name: "SluiceSpoolTests", dependencies: [
            "SluiceSpool", "SluiceDelivery", "SluicePipeline", "SluiceStageAPI", "SMTPCore",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "SluiceStagesTests", dependencies: [
            "SluiceStages", "SluiceStageAPI", "SMTPCore", "SluiceDNS", "CDKIMKeyCache", "SluiceStageTesting", "SluicePipeline",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "SluiceMilterServerTests", dependencies: [
            "SluiceMilterServer", "SluicePipeline", "SluiceStageAPI", "SMTPCore",
        ]),
        .testTarget(name: "SluiceRuntimeTests", dependencies: [
            "SluiceRuntime", "SluiceStageAPI", "SluicePipeline", "SluiceServer", "SluiceStages", "SluiceSpool", "SluiceDelivery", "SMTPCore",
            .product(name: "Logging", package: "swift-log"),
        ]),
    ]
)
