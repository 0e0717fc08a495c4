import Foundation

/// What the API said of one of the account's limit windows in one answer: the plan's 5-hour and
/// weekly windows (subscription), requests and tokens per minute (API key), or a refusal (429,
/// 529) with its `retry-after`.
public struct LimitReading: Codable, Sendable, Equatable {
    /// `five_hour`, `seven_day`, `seven_day_opus`…, `requests`, `tokens`, `input_tokens`,
    /// `output_tokens`, `rate_limited` (a 429 that named no window), `overloaded` (a 529).
    public var window: String
    /// `allowed`, `allowed_warning` or `rejected`.
    public var status: String
    /// How much of the window is used, 0…1; nil when the answer did not say.
    public var utilization: Double?
    public var resetsAt: Date?
    public var observedAt: Date

    public init(window: String, status: String, utilization: Double?, resetsAt: Date?, observedAt: Date) {
        self.window = window
        self.status = status
        self.utilization = utilization
        self.resetsAt = resetsAt
        self.observedAt = observedAt
    }

    public var isRejected: Bool { status == "rejected" }

    /// The plan's windows (subscription mode), as against the API's per-minute limits.
    public var isPlanWindow: Bool { window == "five_hour" || window.hasPrefix("seven_day") }
}

/// Reads the account's limits out of an answer's headers. The headers come from the network:
/// a value that is not a number, is out of range, or names a reset in the past or more than
/// `maxAhead` ahead is ignored, and said in `ignored`, never trusted.
public enum LimitHeaders {
    /// The longest a window may claim to last from now: a week and a day.
    public static let maxAhead: TimeInterval = 8 * 86_400
    /// A refusal that says nothing of when it ends is taken to end after this.
    public static let defaultRetry: TimeInterval = 60

    public struct Outcome: Sendable, Equatable {
        public var readings: [LimitReading] = []
        /// Header values that were not believed, with why (for a log line).
        public var ignored: [String] = []
        /// The answer refused the request for the account's limit (429, or a `rejected` window).
        public var refused: Bool { readings.contains { $0.isRejected && $0.window != "overloaded" } }
    }

    /// `headers` with lowercased names; `status` the answer's HTTP status.
    public static func read(_ headers: [(name: String, value: String)], status: Int, now: Date) -> Outcome {
        var outcome = Outcome()
        var values: [String: String] = [:]
        for (name, value) in headers where name.hasPrefix("anthropic-ratelimit-") || name == "retry-after" {
            values[name.lowercased()] = value.trimmingCharacters(in: .whitespaces)
        }
        func ignore(_ name: String, _ why: String) {
            outcome.ignored.append("\(name): \(WireField.printable(String((values[name] ?? "").prefix(40)))) \(why)")
        }
        func fraction(_ name: String) -> Double? {
            guard let text = values[name] else { return nil }
            guard let value = Double(text), value.isFinite else {
                ignore(name, "is not a number")
                return nil
            }
            guard (0...1).contains(value) else {
                ignore(name, "is not a fraction from 0 to 1")
                return nil
            }
            return value
        }
        func reset(_ name: String, epochSeconds: Bool) -> Date? {
            guard let text = values[name] else { return nil }
            let date: Date?
            if epochSeconds {
                date = Int64(text).flatMap {
                    (0...Int64(1) << 40).contains($0) ? Date(timeIntervalSince1970: Double($0)) : nil
                }
            } else {
                date = try? Date(text, strategy: .iso8601)
            }
            guard let date else {
                ignore(name, epochSeconds ? "is not a time in seconds since 1970" : "is not an RFC 3339 time")
                return nil
            }
            return plausible(date, name: name)
        }
        func plausible(_ date: Date, name: String) -> Date? {
            if date < now.addingTimeInterval(-1) {
                ignore(name, "is in the past")
                return nil
            }
            if date > now.addingTimeInterval(maxAhead) {
                ignore(name, "is more than \(Int(maxAhead / 86_400)) days ahead")
                return nil
            }
            return date
        }
        func windowStatus(_ name: String) -> String? {
            guard let text = values[name] else { return nil }
            guard ["allowed", "allowed_warning", "rejected"].contains(text) else {
                ignore(name, "is not allowed, allowed_warning or rejected")
                return nil
            }
            return text
        }

        // The plan's windows: -5h-, -7d-, -7d_opus-… (utilization, reset, status of each).
        let prefix = "anthropic-ratelimit-unified-"
        var claims = Set<String>()
        for name in values.keys where name.hasPrefix(prefix) {
            for suffix in ["-utilization", "-reset", "-status"] where name.hasSuffix(suffix) {
                let claim = String(name.dropFirst(prefix.count).dropLast(suffix.count))
                if planWindow(claim) != nil { claims.insert(claim) }
            }
        }
        let overall = windowStatus(prefix + "status")
        let representative = values[prefix + "representative-claim"]
        // The API names a weekly window for a few models; an answer naming more is believed for
        // the representative's and the first others only, so that what a reader keeps is bounded.
        let leading = representative.flatMap(planWindow)
        let models = Set(claims.compactMap(planWindow).filter { $0.hasPrefix(modelWindowPrefix) })
        let believed = Set(
            models.sorted { ($0 == leading ? "" : $0) < ($1 == leading ? "" : $1) }.prefix(maxModelWindows))
        if models.count > believed.count {
            outcome.ignored.append(
                "\(prefix)7d_*: \(models.count) model windows, \(models.count - believed.count) past the first \(maxModelWindows) ignored"
            )
        }
        for claim in claims.sorted() {
            let window = planWindow(claim)!
            guard believed.contains(window) || !models.contains(window) else { continue }
            let utilization = fraction(prefix + claim + "-utilization")
            let resetsAt = reset(prefix + claim + "-reset", epochSeconds: true)
            var status = windowStatus(prefix + claim + "-status") ?? "allowed"
            if overall == "rejected" && (representative == window || representative == claim) { status = "rejected" }
            guard utilization != nil || resetsAt != nil || status != "allowed" else { continue }
            outcome.readings.append(
                LimitReading(
                    window: window, status: status, utilization: utilization, resetsAt: resetsAt, observedAt: now))
        }
        if overall == "rejected", !outcome.readings.contains(where: \.isRejected) {
            let window = representative.flatMap(planWindow)
            outcome.readings.append(
                LimitReading(
                    window: window ?? "rate_limited", status: "rejected", utilization: 1,
                    resetsAt: reset(prefix + "reset", epochSeconds: true), observedAt: now))
        }

        // An API key's limits: requests and tokens per minute, with RFC 3339 resets.
        for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
            let base = "anthropic-ratelimit-\(kind)-"
            guard let limitText = values[base + "limit"], let remainingText = values[base + "remaining"] else {
                continue
            }
            guard let limit = Int64(limitText), (1...Int64(1) << 50).contains(limit) else {
                ignore(base + "limit", "is not a positive whole number")
                continue
            }
            guard let remaining = Int64(remainingText), (0...limit).contains(remaining) else {
                ignore(base + "remaining", "is not a whole number from 0 to the limit \(limit)")
                continue
            }
            let utilization = 1 - Double(remaining) / Double(limit)
            outcome.readings.append(
                LimitReading(
                    window: kind.replacingOccurrences(of: "-", with: "_"),
                    status: remaining == 0 ? "rejected" : "allowed", utilization: utilization,
                    resetsAt: reset(base + "reset", epochSeconds: false), observedAt: now))
        }

        // A refusal: when it ends is `retry-after` (seconds), or what a window said.
        if status == 429 || status == 529 {
            var until: Date?
            if let text = values["retry-after"] {
                if let seconds = Double(text), seconds.isFinite, seconds >= 0 {
                    until = plausible(now.addingTimeInterval(seconds.rounded(.up)), name: "retry-after")
                } else {
                    ignore("retry-after", "is not a number of seconds")
                }
            }
            if status == 529 {
                outcome.readings.append(
                    LimitReading(
                        window: "overloaded", status: "rejected", utilization: nil,
                        resetsAt: until ?? now.addingTimeInterval(defaultRetry), observedAt: now))
            } else if let index = outcome.readings.firstIndex(where: \.isRejected) {
                if outcome.readings[index].resetsAt == nil {
                    outcome.readings[index].resetsAt = until ?? now.addingTimeInterval(defaultRetry)
                }
            } else {
                outcome.readings.append(
                    LimitReading(
                        window: "rate_limited", status: "rejected", utilization: nil,
                        resetsAt: until ?? now.addingTimeInterval(defaultRetry), observedAt: now))
            }
        }
        return outcome
    }

    /// `5h` → five_hour, `7d` → seven_day, `7d_opus` or `7d-opus` → seven_day_opus; also the
    /// names themselves (as `representative-claim` gives them). Anything else is not a window.
    static func planWindow(_ claim: String) -> String? {
        if claim == "five_hour" || claim == "5h" { return "five_hour" }
        if claim == "seven_day" || claim == "7d" { return "seven_day" }
        for lead in ["7d_", "7d-", "seven_day_"] where claim.hasPrefix(lead) {
            let rest = claim.dropFirst(lead.count)
            guard (1...16).contains(rest.count), rest.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber) })
            else { return nil }
            return modelWindowPrefix + rest
        }
        return nil
    }

    /// A model's own weekly window: `seven_day_opus`…
    public static let modelWindowPrefix = "seven_day_"
    /// The most model windows read from one answer, or kept by one reader of many answers.
    public static let maxModelWindows = 8
    /// The windows a reading may name besides the models' own: the plan's two, an API key's
    /// per-minute limits, and the refusals that named no window.
    public static let fixedWindows: Set<String> = [
        "five_hour", "seven_day", "requests", "tokens", "input_tokens", "output_tokens", "rate_limited", "overloaded",
    ]

    /// Of `readings`, those a reader that keeps the windows `kept` takes in: the known windows,
    /// any model window it keeps already, and new model windows while it keeps fewer than
    /// `maxModelWindows`. The rest are left out and named, so that answers naming ever new
    /// windows cannot grow what a reader keeps.
    public static func admitted(_ readings: [LimitReading], keeping kept: Set<String>) -> (
        admitted: [LimitReading], leftOut: [String]
    ) {
        var models = kept.filter { $0.hasPrefix(modelWindowPrefix) }
        var admitted: [LimitReading] = []
        var leftOut: [String] = []
        for reading in readings {
            let window = reading.window
            if fixedWindows.contains(window) || models.contains(window) {
                admitted.append(reading)
            } else if window.hasPrefix(modelWindowPrefix), planWindow(window) == window,
                models.count < maxModelWindows
            {
                models.insert(window)
                admitted.append(reading)
            } else {
                leftOut.append(window)
            }
        }
        return (admitted, leftOut)
    }
}

/// How much of each window a provider shares (`capacity.*`): the offer stays on the market
/// while every window it has word of is below its share, and comes back when the one past it
/// resets.
public struct CapacityShares: Sendable, Equatable {
    /// The plan's 5-hour window, 0…1.
    public var fiveHour: Double
    /// The plan's weekly windows, 0…1.
    public var weekly: Double
    /// An API key's requests and tokens per minute, 0…1.
    public var perMinute: Double

    public init(fiveHour: Double = 1, weekly: Double = 1, perMinute: Double = 1) {
        self.fiveHour = fiveHour
        self.weekly = weekly
        self.perMinute = perMinute
    }

    /// A window past its share whose reset is unknown is held this long, then tried again.
    public static let unknownResetHold: TimeInterval = 15 * 60

    public func share(of window: String) -> Double? {
        if window == "five_hour" { return fiveHour }
        if window.hasPrefix("seven_day") { return weekly }
        if ["requests", "tokens", "input_tokens", "output_tokens"].contains(window) { return perMinute }
        return nil
    }

    /// Why the offer is off the market now, and until when; nil when every window allows it.
    /// A reading whose reset has passed says nothing any more.
    public func pause(for readings: [LimitReading], now: Date) -> CapacityPause? {
        var pauses: [CapacityPause] = []
        for reading in readings {
            if let reset = reading.resetsAt, reset <= now { continue }
            let share = share(of: reading.window)
            let past = share.map { (reading.utilization ?? 0) >= $0 } ?? false
            guard reading.isRejected || past else { continue }
            let until = reading.resetsAt ?? reading.observedAt.addingTimeInterval(Self.unknownResetHold)
            guard until > now else { continue }
            let used = reading.utilization.map { " at \(Int(($0 * 100).rounded())) %" } ?? ""
            let why =
                reading.isRejected
                ? "the account's \(reading.window) window is at its limit\(used)"
                : "the \(reading.window) window is\(used), past the share of \(Int(((share ?? 1) * 100).rounded())) %"
            pauses.append(CapacityPause(until: until, window: reading.window, reason: why))
        }
        // The offer returns when every window allows it: the latest reset of those past their share.
        return pauses.max { $0.until < $1.until }
    }
}

/// The offer is off the market until `until`, for `window`.
public struct CapacityPause: Sendable, Equatable {
    public var until: Date
    public var window: String
    public var reason: String

    public init(until: Date, window: String, reason: String) {
        self.until = until
        self.window = window
        self.reason = reason
    }
}
