// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "claude-max-market",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "claude-max-market", targets: ["claude-max-market"]),
        .executable(name: "cmm-benchmarks", targets: ["Benchmarks"]),
        .executable(name: "cmm-faults", targets: ["Faults"]),
        .executable(name: "cmm-fuzz", targets: ["Fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    ],
    targets: [
        .target(name: "MarketCore"),
        .target(name: "MarketProtocol", dependencies: ["MarketCore"]),
        .target(name: "Workspace", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        .target(
            name: "MarketCrypto",
            dependencies: [
                "MarketCore",
                "MarketProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "MarketStore",
            dependencies: [
                "MarketCore",
                "MarketProtocol",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "MarketServer",
            dependencies: [
                "MarketCore",
                "MarketProtocol",
                "MarketCrypto",
                "MarketStore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "MarketClient",
            dependencies: [
                "MarketCore",
                "MarketProtocol",
                "MarketCrypto",
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "DockerEngine",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Participant",
            dependencies: [
                "MarketCore",
                "MarketProtocol",
                "MarketCrypto",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "JobRunner",
            dependencies: [
                "MarketCore",
                "DockerEngine",
                "Workspace",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "MarketFlows",
            dependencies: [
                "MarketCore",
                "MarketProtocol",
                "Workspace",
                "MarketCrypto",
                "DockerEngine",
                "JobRunner",
                "Participant",
                "MarketClient",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "ParticipantCLI",
            dependencies: [
                "MarketFlows",
                "Workspace",
                "MarketCore",
                "MarketProtocol",
                "MarketCrypto",
                "DockerEngine",
                "JobRunner",
                "Participant",
                "MarketClient",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "ClaudeMaxMarketCLI",
            dependencies: [
                "ParticipantCLI",
                "MarketCore",
                "MarketProtocol",
                "Participant",
                "MarketStore",
                "MarketServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "claude-max-market",
            dependencies: ["ClaudeMaxMarketCLI"]
        ),
        .executableTarget(
            name: "Benchmarks",
            dependencies: [
                "MarketCore",
                "MarketProtocol",
                "MarketCrypto",
                "DockerEngine",
                "JobRunner",
                "MarketClient",
                "MarketStore",
                "Participant",
                "MarketFlows",
                "TestSupport",
                "Workspace",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks"
        ),
        .executableTarget(
            name: "Faults",
            dependencies: [
                "MarketCore", "MarketProtocol", "MarketCrypto", "MarketClient", "DockerEngine", "Participant",
                "TestSupport",
            ],
            path: "Faults"
        ),
        .executableTarget(
            name: "Fuzz",
            dependencies: [
                "MarketCore", "MarketProtocol", "MarketCrypto", "Workspace",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Fuzz",
            exclude: ["patch.dict", "tar.dict", "hostile_market.py"]
        ),
        .target(
            name: "TestSupport",
            dependencies: [
                "MarketCore", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"), .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Tests/TestSupport"
        ),
        .target(name: "TestTraits", dependencies: ["TestSupport"], path: "Tests/TestTraits"),
        .testTarget(name: "MarketCoreTests", dependencies: ["MarketCore", "MarketProtocol", "TestSupport"]),
        .testTarget(name: "WorkspaceTests", dependencies: ["Workspace", "TestSupport"]),
        .testTarget(
            name: "MarketCryptoTests", dependencies: ["MarketCrypto", "MarketProtocol", "TestSupport"],
            exclude: ["Interop"]),
        .testTarget(name: "ParticipantTests", dependencies: ["Participant", "MarketCrypto", "TestSupport"]),
        .testTarget(
            name: "DockerEngineTests",
            dependencies: [
                "DockerEngine", "TestSupport", "MarketCore", .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "JobRunnerTests",
            dependencies: [
                "JobRunner", "DockerEngine", "TestSupport", "TestTraits", "MarketCore", "Workspace",
                "claude-max-market",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "MarketStoreTests",
            dependencies: [
                "MarketStore", "MarketCore", "MarketProtocol", "TestSupport",
                .product(name: "Logging", package: "swift-log"), .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
        .testTarget(
            name: "MarketServerTests",
            dependencies: [
                "MarketServer", "MarketStore", "MarketClient", "MarketCrypto", "MarketCore", "MarketProtocol",
                "TestSupport",
                "claude-max-market",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Interop"]
        ),
        .testTarget(
            name: "MarketFlowTests",
            dependencies: [
                "TestSupport", "TestTraits", "DockerEngine", "MarketClient", "MarketCrypto", "MarketCore",
                "MarketProtocol", "MarketFlows",
                "Participant", "JobRunner", "Workspace", "claude-max-market",
            ],
            exclude: ["Browser"]
        ),
        .testTarget(
            name: "CLITests",
            dependencies: ["TestSupport", "DockerEngine", "Participant", "Workspace", "claude-max-market"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
