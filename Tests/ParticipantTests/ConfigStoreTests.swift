import Foundation
import Participant
import TestSupport
import Testing

@Suite struct ConfigStoreTests {
    let directory = TemporaryDirectory()
    var paths: ParticipantPaths { ParticipantPaths(environment: ["CMM_HOME": directory.path]) }

    func store(environment: [String: String] = [:], flags: [String: String] = [:]) -> ConfigStore {
        ConfigStore(paths: paths, environment: environment, flags: flags)
    }

    @Test func defaultsMatchTheDocumentedValues() throws {
        let config = try store().resolve()
        #expect(config.bytes(.dockerMemory) == 512 << 20)
        #expect(config.integer(.dockerCPUShares) == 512)
        #expect(config.integer(.dockerPidsLimit) == 128)
        #expect(config.integer(.dockerTimeoutSeconds) == 300)
        #expect(config.integer(.dailyTasks) == 5)
        #expect(config.integer(.dailyTokens) == 5000)
        #expect(config.integer(.maxTokensPerTask) == 1000)
        #expect(config.integer(.concurrentJobs) == 1)
        #expect(config.integer(.keyRotationDays) == 30)
        #expect(config.text(.approvalMode) == "manual")
        #expect(config.text(.marketURL) == "ws://127.0.0.1:8080/market")
        #expect(config.credits(.marketDefaultPrice).micro == 5_000_000)
        #expect(config.credits(.marketMaxBidPrice).micro == 100_000_000)
        #expect(config.boolean(.marketAllowSubscriptionLogin) == false)
        #expect(config.entries.allSatisfy { $0.layer == .default })
    }

    @Test func everyDefaultIsAllowedByItsOwnKey() {
        for key in ConfigKey.all {
            #expect(key.parse(key.defaultValue.description) == key.defaultValue, "\(key.name)")
            #expect(!key.summary.isEmpty)
        }
    }

    @Test func layersOverrideInOrder() throws {
        _ = try store().set([("limits.dailyTasks", "3"), ("docker.pidsLimit", "64")])
        let config = try store(
            environment: ["CMM_LIMITS_DAILYTASKS": "4", "CMM_DOCKER_MEMORY": "1g"],
            flags: ["limits.dailyTasks": "2"]
        ).resolve()
        #expect(config.integer(.dailyTasks) == 2)
        #expect(config.layer(of: .dailyTasks) == .flag)
        #expect(config.bytes(.dockerMemory) == 1 << 30)
        #expect(config.layer(of: .dockerMemory) == .environment)
        #expect(config.integer(.dockerPidsLimit) == 64)
        #expect(config.layer(of: .dockerPidsLimit) == .file)
        #expect(config.layer(of: .dockerCPUShares) == .default)
    }

    @Test(arguments: [
        ("limits.dailyTasks", "0"), ("limits.dailyTasks", "-1"), ("limits.dailyTasks", "abc"),
        ("limits.dailyTasks", "99999999999999999999"), ("docker.memory", "1t"), ("docker.memory", "12q"),
        ("docker.memory", "1m"), ("approval.mode", "auto"), ("market.url", "http://example"),
        ("market.defaultPrice", "-5"), ("market.defaultPrice", "0.0000001"), ("market.allowSubscriptionLogin", "maybe"),
        ("egress.allowlist", "api.anthropic.com"), ("egress.allowlist", "http://x:443/path"),
        ("egress.allowlist", "аpi.anthropic.com:443"), ("egress.allowlist", "[::g]:443"),
        ("egress.allowlist", "host:0"), ("egress.allowlist", "10.0.0.999:80"),
        ("claude.apiBaseURL", "http://example.com"),
        ("claude.apiBaseURL", "https://example.com/v1"), ("docker.cpuShares", "1"), ("security.keyRotationDays", "366"),
        ("capacity.fiveHourShare", "1.5"), ("capacity.weeklyShare", "-0.1"), ("capacity.perMinuteShare", "most"),
        ("capacity.fiveHourShare", "0.333"),
    ])
    func badValuesAreRefusedAndNothingIsWritten(key: String, value: String) throws {
        _ = try store().set([("limits.weeklyTasks", "30")])
        let before = try Data(contentsOf: paths.configFile)
        #expect {
            _ = try store().set([("docker.pidsLimit", "100"), (key, value)])
        } throws: { error in
            let text = "\(error)"
            return text.contains(key) && text.contains(value) && text.contains("expected")
        }
        #expect(try Data(contentsOf: paths.configFile) == before)
    }

    /// The config stores the one spelling the egress proxy compares and connects to.
    @Test func allowlistEntriesAreStoredNormalised() throws {
        _ = try store().set([("egress.allowlist", "API.Example.COM.:0443, [0:0:0:0:0:0:0:1]:443, 127.0.0.1:80")])
        let config = try store().resolve()
        #expect(config.list(.egressAllowlist) == ["api.example.com:443", "[::1]:443", "127.0.0.1:80"])
    }

    @Test func unknownKeysAreRefusedWithAHint() throws {
        #expect {
            _ = try store().set([("limits.daylyTasks", "3")])
        } throws: {
            "\($0)".contains("unknown config key 'limits.daylyTasks'") && "\($0)".contains("limits.dailyTasks")
        }
        #expect(!FileManager.default.fileExists(atPath: paths.configFile.path))
    }

    /// A config from before the gateway held the subscription names the login volume: the error
    /// says what replaced it, and `config --unset` takes it out.
    @Test func aRetiredKeySaysWhatReplacedItAndCanBeRemoved() throws {
        try paths.prepare()
        try Data(#"{"claude.loginVolume": "claude-max-market-login", "limits.dailyTasks": 3}"#.utf8).write(
            to: paths.configFile)
        #expect { try store().resolve() } throws: {
            "\($0)".contains("'claude.loginVolume'") && "\($0)".contains("claude.oauthTokenFile")
                && "\($0)".contains("config --unset claude.loginVolume")
        }
        try store().unset(["claude.loginVolume"])
        let config = try store().resolve()
        #expect(config.integer(.dailyTasks) == 3)
        #expect(config.hundredths(.capacityFiveHourShare) == 100)
    }

    @Test func aBadFileOrEnvironmentValueFailsResolution() throws {
        try paths.prepare()
        try Data(#"{"limits.dailyTasks": 3, "nope": 1}"#.utf8).write(to: paths.configFile)
        #expect { try store().resolve() } throws: { "\($0)".contains("unknown config key 'nope'") }
        try Data(#"{"limits.dailyTasks": "many"}"#.utf8).write(to: paths.configFile)
        #expect { try store().resolve() } throws: { "\($0)".contains("'many'") }
        try Data("not json".utf8).write(to: paths.configFile)
        #expect { try store().resolve() } throws: { "\($0)".contains("JSON object") }
        try FileManager.default.removeItem(at: paths.configFile)
        #expect {
            try store(environment: ["CMM_DOCKER_PIDSLIMIT": "1"]).resolve()
        } throws: { "\($0)".contains("CMM_DOCKER_PIDSLIMIT") && "\($0)".contains("16 to 4096") }
    }

    @Test func crossKeyRulesAreEnforced() throws {
        #expect { _ = try store().set([("limits.weeklyTasks", "2")]) } throws: {
            "\($0)".contains("limits.weeklyTasks=2")
        }
        #expect { _ = try store().set([("limits.maxTokensPerTask", "6000")]) } throws: {
            "\($0)".contains("limits.maxTokensPerTask=6000")
        }
    }

    @Test func exportImportRoundTripAndTypedFileValues() throws {
        _ = try store().set([
            ("limits.dailyTasks", "3"), ("egress.allowlist", "api.anthropic.com:443, 127.0.0.1:9999"),
            ("market.allowSubscriptionLogin", "true"), ("docker.memory", "256M"),
        ])
        let exported = try store().exportData()
        let object = try #require(try JSONSerialization.jsonObject(with: exported) as? [String: Any])
        #expect(object["limits.dailyTasks"] as? Int == 3)
        #expect(object["egress.allowlist"] as? [String] == ["api.anthropic.com:443", "127.0.0.1:9999"])
        #expect(object["docker.memory"] as? String == "256m")
        try store().reset()
        #expect(try store().resolve().integer(.dailyTasks) == 5)
        _ = try store().importData(exported, source: "test")
        let config = try store().resolve()
        #expect(config.integer(.dailyTasks) == 3)
        #expect(config.boolean(.marketAllowSubscriptionLogin))
        #expect(config.list(.egressAllowlist) == ["api.anthropic.com:443", "127.0.0.1:9999"])
    }

    @Test func importOfABadFileChangesNothing() throws {
        _ = try store().set([("limits.dailyTasks", "3")])
        let before = try Data(contentsOf: paths.configFile)
        #expect {
            _ = try store().importData(Data(#"{"limits.dailyTasks": 4, "x.y": 1}"#.utf8), source: "bad.json")
        } throws: { "\($0)".contains("x.y") }
        #expect(try Data(contentsOf: paths.configFile) == before)
    }

    @Test func configFileIsPrivate() throws {
        _ = try store().set([("limits.dailyTasks", "3")])
        #expect(FilePermissions.mode(of: paths.configFile.path) == 0o600)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: paths.configDirectory.path)
            .filter { $0.hasSuffix(".tmp") }
        #expect(leftovers.isEmpty)
    }

    @Test func assignmentsParse() throws {
        let assignment = try ConfigStore.parseAssignment("a.b=c=d")
        #expect(assignment.key == "a.b" && assignment.value == "c=d")
        #expect(throws: ConfigError.self) { try ConfigStore.parseAssignment("=x") }
        #expect(throws: ConfigError.self) { try ConfigStore.parseAssignment("novalue") }
    }
}
