import Foundation
import MarketCore
import MarketCrypto

/// Where a configuration value came from, lowest precedence first.
public enum ConfigLayer: String, Sendable, Codable, Comparable {
    case `default`, file, environment, flag

    public static func < (lhs: ConfigLayer, rhs: ConfigLayer) -> Bool {
        let order: [ConfigLayer] = [.default, .file, .environment, .flag]
        return order.firstIndex(of: lhs)! < order.firstIndex(of: rhs)!
    }
}

/// The effective configuration: every key with its value and the layer it came from.
public struct ResolvedConfig: Sendable {
    public struct Entry: Sendable {
        public let key: ConfigKey
        public let value: ConfigValue
        public let layer: ConfigLayer
    }

    public let entries: [Entry]

    public subscript(key: ConfigKey) -> ConfigValue {
        entries.first { $0.key == key }?.value ?? key.defaultValue
    }

    public func layer(of key: ConfigKey) -> ConfigLayer {
        entries.first { $0.key == key }?.layer ?? .default
    }

    public func integer(_ key: ConfigKey) -> Int64 {
        guard case .integer(let value) = self[key] else { preconditionFailure("\(key.name) is not an integer key") }
        return value
    }

    public func bytes(_ key: ConfigKey) -> Int64 {
        guard case .text(let text) = self[key], let value = ByteSize.parse(text) else {
            preconditionFailure("\(key.name) is not a size key")
        }
        return value
    }

    /// A decimal key in hundredths (`1.5` → 150), exact.
    public func hundredths(_ key: ConfigKey) -> Int64 {
        guard case .text(let text) = self[key] else { preconditionFailure("\(key.name) is not a decimal key") }
        let parts = text.split(separator: ".")
        let whole = Int64(parts[0]) ?? 0
        let fraction = parts.count > 1 ? Int64(parts[1].padding(toLength: 2, withPad: "0", startingAt: 0)) ?? 0 : 0
        return whole * 100 + fraction
    }

    public func boolean(_ key: ConfigKey) -> Bool {
        guard case .boolean(let value) = self[key] else { preconditionFailure("\(key.name) is not a boolean key") }
        return value
    }

    public func text(_ key: ConfigKey) -> String {
        guard case .text(let value) = self[key] else { preconditionFailure("\(key.name) is not a text key") }
        return value
    }

    public func list(_ key: ConfigKey) -> [String] {
        guard case .list(let values) = self[key] else { preconditionFailure("\(key.name) is not a list key") }
        return values
    }

    public func credits(_ key: ConfigKey) -> Credits {
        guard let value = try? Credits(parsing: text(key)) else { preconditionFailure("\(key.name) is not credits") }
        return value
    }
}

/// Reads and writes the layered configuration: defaults < `config.json` < `CMM_*` environment
/// < command-line flags. Every write validates first and writes nothing when any value is bad.
public struct ConfigStore: Sendable {
    public let paths: ParticipantPaths
    public let environment: [String: String]
    /// Values from command-line flags, by key name, as typed by the user.
    public let flags: [String: String]

    public init(paths: ParticipantPaths, environment: [String: String], flags: [String: String] = [:]) {
        self.paths = paths
        self.environment = environment
        self.flags = flags
    }

    /// Resolves every layer. Any unknown key or bad value, in any layer, is an error.
    public func resolve() throws(ConfigError) -> ResolvedConfig {
        let file = try readFileLayer()
        let environmentValues = try environmentLayer()
        var flagValues: [String: ConfigValue] = [:]
        for (name, raw) in flags {
            guard let key = ConfigKey.named(name) else { throw .unknownKey(name, source: "command-line flags") }
            guard let value = key.parse(raw) else { throw .invalidValue(key, value: raw, source: "command-line flags") }
            flagValues[name] = value
        }
        let entries = ConfigKey.all.map { key -> ResolvedConfig.Entry in
            if let value = flagValues[key.name] { return .init(key: key, value: value, layer: .flag) }
            if let value = environmentValues[key.name] { return .init(key: key, value: value, layer: .environment) }
            if let value = file[key.name] { return .init(key: key, value: value, layer: .file) }
            return .init(key: key, value: key.defaultValue, layer: .default)
        }
        let resolved = ResolvedConfig(entries: entries)
        try Self.checkConsistency(resolved)
        return resolved
    }

    /// The values set in `config.json`, validated.
    /// The file's keys and values; `dropping` names retired keys to leave out (`config --unset`).
    public func readFileLayer(dropping retired: Set<String> = []) throws(ConfigError) -> [String: ConfigValue] {
        let url = paths.configFile
        guard FileManager.default.fileExists(atPath: url.path) else { return [:] }
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw ConfigError(code: .unreadableFile(path: url.path, reason: "\(error.localizedDescription)"))
        }
        return try Self.parseFile(data, source: url.path, dropping: retired)
    }

    static func parseFile(_ data: Data, source: String, dropping retired: Set<String> = []) throws(ConfigError)
        -> [String: ConfigValue]
    {
        let raw: [String: ConfigFileValue]
        do { raw = try JSONDecoder().decode([String: ConfigFileValue].self, from: data) } catch {
            throw ConfigError(
                code: .unreadableFile(path: source, reason: "expected a JSON object of \"key\": value pairs (\(error))")
            )
        }
        var values: [String: ConfigValue] = [:]
        for (name, fileValue) in raw.sorted(by: { $0.key < $1.key }) where !retired.contains(name) {
            guard let key = ConfigKey.named(name) else { throw .unknownKey(name, source: source) }
            guard let value = key.parse(fileValue) else {
                throw .invalidValue(key, value: fileValue.display, source: source)
            }
            values[name] = value
        }
        return values
    }

    /// `CMM_` variables that are not config keys.
    public static let otherVariables: Set<String> = [
        "CMM_HOME", "CMM_REQUIRE_DOCKER", "CMM_REQUIRE_BROWSER", "CMM_REQUIRE_POSTGRES", "CMM_BENCH_RUNS",
        "CMM_TEST_BINARY",
        // Tests only: the certificate authority of a loopback stand-in for the Claude API, and a
        // shorter wait for it (see `execute`).
        "CMM_TEST_GATEWAY_CA_FILE", "CMM_TEST_GATEWAY_TIMEOUT",
    ]

    /// A `CMM_` variable that sets no key is refused like an unknown key in the file: a typo must
    /// not leave a limit silently unset.
    func environmentLayer() throws(ConfigError) -> [String: ConfigValue] {
        let known = Set(ConfigKey.all.map(\.environmentName)).union(Self.otherVariables)
        if let unknown = environment.keys.filter({ $0.hasPrefix("CMM_") && !known.contains($0) }).sorted().first {
            throw .unknownVariable(unknown)
        }
        var values: [String: ConfigValue] = [:]
        for key in ConfigKey.all {
            guard let raw = environment[key.environmentName] else { continue }
            guard let value = key.parse(raw) else {
                throw .invalidValue(key, value: raw, source: "environment variable \(key.environmentName)")
            }
            values[key.name] = value
        }
        return values
    }

    /// Rules that span keys. A violation names both keys and their values.
    static func checkConsistency(_ config: ResolvedConfig) throws(ConfigError) {
        let daily = config.integer(.dailyTasks)
        let weekly = config.integer(.weeklyTasks)
        let monthly = config.integer(.monthlyTasks)
        if weekly < daily || monthly < weekly {
            throw ConfigError(
                code: .inconsistent(
                    "limits must not shrink with a longer period: limits.dailyTasks=\(daily), "
                        + "limits.weeklyTasks=\(weekly), limits.monthlyTasks=\(monthly) "
                        + "(allowed: daily ≤ weekly ≤ monthly)"))
        }
        let perTask = config.integer(.maxTokensPerTask)
        let dailyTokens = config.integer(.dailyTokens)
        if perTask > dailyTokens {
            throw ConfigError(
                code: .inconsistent(
                    "limits.maxTokensPerTask=\(perTask) is larger than limits.dailyTokens=\(dailyTokens) "
                        + "(allowed: maxTokensPerTask ≤ dailyTokens)"))
        }
    }

    // MARK: Writing

    /// Validates `assignments` against the current file, then writes them all or none. `source`
    /// names the command in error messages.
    public func set(
        _ assignments: [(key: String, value: String)], source: String = "config --set"
    ) throws -> [String: ConfigValue] {
        var file = try readFileLayer()
        for (name, raw) in assignments {
            guard let key = ConfigKey.named(name) else { throw ConfigError.unknownKey(name, source: source) }
            guard let value = key.parse(raw) else {
                throw ConfigError.invalidValue(key, value: raw, source: source)
            }
            file[name] = value
        }
        try validateCandidate(file)
        try writeFileLayer(file)
        return file
    }

    public func unset(_ names: [String]) throws {
        var file = try readFileLayer(dropping: Set(names.filter { ConfigKey.retired[$0] != nil }))
        for name in names {
            guard ConfigKey.named(name) != nil || ConfigKey.retired[name] != nil else {
                throw ConfigError.unknownKey(name, source: "config --unset")
            }
            file[name] = nil
        }
        try validateCandidate(file)
        try writeFileLayer(file)
    }

    public func reset() throws {
        try writeFileLayer([:])
    }

    /// The file layer as JSON (only keys set in the file; no secret is ever a config value).
    public func exportData() throws -> Data {
        try Self.encode(readFileLayer())
    }

    /// Replaces the file layer with the contents of `data`, after validating every key.
    public func importData(_ data: Data, source: String) throws -> [String: ConfigValue] {
        let values = try Self.parseFile(data, source: source)
        try validateCandidate(values)
        try writeFileLayer(values)
        return values
    }

    private func validateCandidate(_ file: [String: ConfigValue]) throws {
        let entries = ConfigKey.all.map { key in
            ResolvedConfig.Entry(key: key, value: file[key.name] ?? key.defaultValue, layer: .file)
        }
        try Self.checkConsistency(ResolvedConfig(entries: entries))
    }

    private func writeFileLayer(_ values: [String: ConfigValue]) throws {
        try FileManager.default.createDirectory(
            at: paths.configDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try AtomicFile.write(Self.encode(values), to: paths.configFile, permissions: 0o600)
    }

    static func encode(_ values: [String: ConfigValue]) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(values.mapValues(\.fileValue))
        data.append(0x0a)
        return data
    }

    /// Parses `KEY=VALUE`.
    public static func parseAssignment(_ text: String) throws(ConfigError) -> (key: String, value: String) {
        guard let equals = text.firstIndex(of: "="), equals != text.startIndex else {
            throw ConfigError(code: .malformedAssignment(text))
        }
        return (
            String(text[..<equals]).trimmingCharacters(in: .whitespaces), String(text[text.index(after: equals)...])
        )
    }
}
