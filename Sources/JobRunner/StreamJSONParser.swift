import Foundation
import MarketCore

/// Token usage of one model, as Claude Code reports it.
public struct ModelUsage: Codable, Sendable, Equatable {
    public var inputTokens: Int64 = 0
    public var outputTokens: Int64 = 0
    public var cacheReadInputTokens: Int64 = 0
    public var cacheCreationInputTokens: Int64 = 0
    public var costUSD: Double = 0

    public init() {}

    /// Input (with cache reads and writes) and output tokens: what a token budget counts.
    public var allTokens: Int64 {
        inputTokens.saturatingAdd(outputTokens).saturatingAdd(cacheReadInputTokens).saturatingAdd(
            cacheCreationInputTokens)
    }

    /// Counts read from a job's output are its claims: summed without trapping.
    public static func + (lhs: ModelUsage, rhs: ModelUsage) -> ModelUsage {
        var sum = lhs
        sum.inputTokens = sum.inputTokens.saturatingAdd(rhs.inputTokens)
        sum.outputTokens = sum.outputTokens.saturatingAdd(rhs.outputTokens)
        sum.cacheReadInputTokens = sum.cacheReadInputTokens.saturatingAdd(rhs.cacheReadInputTokens)
        sum.cacheCreationInputTokens = sum.cacheCreationInputTokens.saturatingAdd(rhs.cacheCreationInputTokens)
        sum.costUSD += rhs.costUSD
        return sum
    }
}

/// A rate-limit notice: the plan's five-hour or weekly window.
public struct RateLimitNotice: Codable, Sendable, Equatable {
    public var window: String
    public var status: String
    public var resetsAt: Date?
    public var utilization: Double?

    public init(window: String, status: String, resetsAt: Date?, utilization: Double?) {
        self.window = window
        self.status = status
        self.resetsAt = resetsAt
        self.utilization = utilization
    }
}

/// What a `claude -p --output-format stream-json` line meant.
public enum StreamEvent: Sendable, Equatable {
    case initialized(model: String, tools: [String], version: String?)
    /// Text from an assistant message (each message id counted once for usage).
    case text(String)
    /// A piece of an assistant message's text as it streams (`--include-partial-messages`);
    /// the whole message follows as `.text`.
    case textDelta(String)
    case toolUse(name: String)
    case toolResult(isError: Bool)
    case rateLimit(RateLimitNotice)
    case result(ClaudeResult)
    /// A known line type whose details are not used (hooks, retries, progress).
    case skipped(type: String)
    /// A line that is not JSON; reported, and the stream goes on.
    case notJSON(String)
}

/// The outcome of a Claude Code run: its final `result` line.
public struct ClaudeResult: Codable, Sendable, Equatable {
    public var subtype: String
    public var isError: Bool
    public var text: String?
    public var errors: [String]
    public var turns: Int?
    public var durationMs: Int?
    public var totalCostUSD: Double
    /// Per model, from `modelUsage` (includes subagents) or, failing that, `usage`.
    public var usage: [String: ModelUsage]

    public var total: ModelUsage { usage.values.reduce(ModelUsage(), +) }
}

/// Parses Claude Code's stream-json output line by line. Tolerant by design: unknown types and
/// fields are skipped, a line that is not JSON is reported without losing the rest.
public struct StreamJSONParser: Sendable {
    private var seenMessageIDs: Set<String> = []
    private var model: String?
    /// Usage summed from assistant messages (one count per message id), used when no result line came.
    public private(set) var assistantUsage = ModelUsage()
    public private(set) var result: ClaudeResult?
    public private(set) var rateLimits: [RateLimitNotice] = []
    public private(set) var notJSONLines = 0

    public init() {}

    public mutating func parse(line raw: String) -> [StreamEvent] {
        let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !line.isEmpty else { return [] }
        guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
            let type = object["type"] as? String
        else {
            notJSONLines += 1
            return [.notJSON(String(line.prefix(500)))]
        }
        switch type {
        case "system" where object["subtype"] as? String == "init":
            model = object["model"] as? String
            return [
                .initialized(
                    model: model ?? "", tools: object["tools"] as? [String] ?? [],
                    version: object["claude_code_version"] as? String)
            ]
        case "assistant":
            return assistant(object)
        case "user":
            let content = (object["message"] as? [String: Any])?["content"] as? [[String: Any]] ?? []
            return content.filter { $0["type"] as? String == "tool_result" }.map {
                .toolResult(isError: $0["is_error"] as? Bool ?? false)
            }
        case "rate_limit_event":
            guard let info = object["rate_limit_info"] as? [String: Any] else { return [.skipped(type: type)] }
            let notice = RateLimitNotice(
                window: info["rateLimitType"] as? String ?? "unknown", status: info["status"] as? String ?? "unknown",
                resetsAt: (info["resetsAt"] as? NSNumber).map { Date(timeIntervalSince1970: $0.doubleValue) },
                utilization: (info["utilization"] as? NSNumber)?.doubleValue)
            rateLimits.append(notice)
            return [.rateLimit(notice)]
        case "stream_event":
            guard let event = object["event"] as? [String: Any], event["type"] as? String == "content_block_delta",
                let delta = event["delta"] as? [String: Any], delta["type"] as? String == "text_delta",
                let text = delta["text"] as? String
            else { return [.skipped(type: type)] }
            return [.textDelta(text)]
        case "result":
            let parsed = Self.result(object, fallbackModel: model ?? "unknown")
            result = parsed
            return [.result(parsed)]
        default:
            return [.skipped(type: type)]
        }
    }

    private mutating func assistant(_ object: [String: Any]) -> [StreamEvent] {
        guard let message = object["message"] as? [String: Any] else { return [.skipped(type: "assistant")] }
        if let id = message["id"] as? String, seenMessageIDs.insert(id).inserted,
            let usage = message["usage"] as? [String: Any]
        {
            assistantUsage = assistantUsage + Self.usage(snakeCase: usage)
        }
        let content = message["content"] as? [[String: Any]] ?? []
        return content.compactMap { block in
            switch block["type"] as? String {
            case "text": (block["text"] as? String).map(StreamEvent.text)
            case "tool_use": .toolUse(name: block["name"] as? String ?? "?")
            default: nil
            }
        }
    }

    static func result(_ object: [String: Any], fallbackModel: String) -> ClaudeResult {
        var usage: [String: ModelUsage] = [:]
        if let models = object["modelUsage"] as? [String: [String: Any]], !models.isEmpty {
            for (model, values) in models {
                var entry = ModelUsage()
                entry.inputTokens = int(values["inputTokens"])
                entry.outputTokens = int(values["outputTokens"])
                entry.cacheReadInputTokens = int(values["cacheReadInputTokens"])
                entry.cacheCreationInputTokens = int(values["cacheCreationInputTokens"])
                entry.costUSD = (values["costUSD"] as? NSNumber)?.doubleValue ?? 0
                usage[model] = entry
            }
        } else if let total = object["usage"] as? [String: Any] {
            var entry = Self.usage(snakeCase: total)
            entry.costUSD = (object["total_cost_usd"] as? NSNumber)?.doubleValue ?? 0
            if entry != ModelUsage() { usage[fallbackModel] = entry }
        }
        return ClaudeResult(
            subtype: object["subtype"] as? String ?? "unknown", isError: object["is_error"] as? Bool ?? false,
            text: object["result"] as? String, errors: object["errors"] as? [String] ?? [],
            turns: (object["num_turns"] as? NSNumber)?.intValue,
            durationMs: (object["duration_ms"] as? NSNumber)?.intValue,
            totalCostUSD: (object["total_cost_usd"] as? NSNumber)?.doubleValue ?? 0, usage: usage)
    }

    static func usage(snakeCase values: [String: Any]) -> ModelUsage {
        var entry = ModelUsage()
        entry.inputTokens = int(values["input_tokens"])
        entry.outputTokens = int(values["output_tokens"])
        entry.cacheReadInputTokens = int(values["cache_read_input_tokens"])
        entry.cacheCreationInputTokens = int(values["cache_creation_input_tokens"])
        return entry
    }

    /// A token count as a job printed it: never below zero, never past a trillion (a number
    /// of 1e300 or -2^63 reads as one of those bounds, not as a trap further on).
    static func int(_ value: Any?) -> Int64 { Swift.min(Swift.max((value as? NSNumber)?.int64Value ?? 0, 0), 1 << 40) }
}
