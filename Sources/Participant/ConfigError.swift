import Foundation

/// Why a configuration was refused. Always names the key, the value and what is allowed.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    enum Code: Sendable {
        case unknownKey(key: String, source: String)
        case unknownVariable(String)
        case invalidValue(key: String, value: String, allowed: String, source: String)
        case malformedAssignment(String)
        case unreadableFile(path: String, reason: String)
        case inconsistent(String)
    }

    let code: Code

    public static func unknownKey(_ key: String, source: String) -> ConfigError {
        ConfigError(code: .unknownKey(key: key, source: source))
    }

    public static func invalidValue(_ key: ConfigKey, value: String, source: String) -> ConfigError {
        ConfigError(code: .invalidValue(key: key.name, value: value, allowed: key.allowed, source: source))
    }

    public static func unknownVariable(_ name: String) -> ConfigError {
        ConfigError(code: .unknownVariable(name))
    }

    public var description: String {
        switch code {
        case .unknownVariable(let name):
            let suggestion = ConfigKey.all.map(\.environmentName).min { distance($0, name) < distance($1, name) }
            let hint = suggestion.map { distance($0, name) <= 4 ? " (did you mean \($0)?)" : "" } ?? ""
            return "unknown environment variable \(name)\(hint): no config key is set by it; a key's variable is "
                + "CMM_ and the key in capitals, dots as _ (limits.dailyTasks: CMM_LIMITS_DAILYTASKS)"
        case .unknownKey(let key, let source):
            if let retired = ConfigKey.retired[key] {
                return
                    "config key '\(key)' in \(source) is no longer used: \(retired); remove it with `config --unset \(key)`"
            }
            let suggestion = ConfigKey.all.map(\.name).min { distance($0, key) < distance($1, key) }
            let hint = suggestion.map { distance($0, key) <= 4 ? " (did you mean \($0)?)" : "" } ?? ""
            return "unknown config key '\(key)' in \(source)\(hint); `config --list` shows every key"
        case .invalidValue(let key, let value, let allowed, let source):
            return "invalid value '\(value)' for \(key) in \(source): expected \(allowed)"
        case .malformedAssignment(let text):
            return "'\(text)' is not an assignment: expected KEY=VALUE, e.g. limits.dailyTasks=3"
        case .unreadableFile(let path, let reason):
            return "cannot read config file \(path): \(reason)"
        case .inconsistent(let message):
            return message
        }
    }
}

/// Levenshtein distance, for "did you mean" hints.
private func distance(_ a: String, _ b: String) -> Int {
    let a = Array(a.lowercased())
    let b = Array(b.lowercased())
    var previous = Array(0...b.count)
    for (i, ca) in a.enumerated() {
        var current = [i + 1]
        for (j, cb) in b.enumerated() {
            current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (ca == cb ? 0 : 1)))
        }
        previous = current
    }
    return previous[b.count]
}
