import Foundation
import MarketCore
import Testing

/// The account's limits as the answers' headers state them, and the shares a provider gives:
/// pure functions of the headers and an injected clock.
@Suite struct AccountLimitsTests {
    let now = Date(timeIntervalSince1970: 1_796_000_000)

    func epoch(_ offset: TimeInterval) -> String { String(Int(now.timeIntervalSince1970 + offset)) }

    @Test func thePlansWindowsAreReadWithTheirResets() {
        let outcome = LimitHeaders.read(
            [
                ("anthropic-ratelimit-unified-status", "allowed"),
                ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
                ("anthropic-ratelimit-unified-5h-utilization", "0.72"),
                ("anthropic-ratelimit-unified-5h-reset", epoch(3600)),
                ("anthropic-ratelimit-unified-5h-status", "allowed_warning"),
                ("anthropic-ratelimit-unified-7d-utilization", "0.3"),
                ("anthropic-ratelimit-unified-7d-reset", epoch(4 * 86_400)),
                ("anthropic-ratelimit-unified-7d_opus-utilization", "0.9"),
                ("anthropic-ratelimit-unified-7d_opus-reset", epoch(4 * 86_400)),
                ("anthropic-ratelimit-unified-overage-status", "rejected"),
                ("content-type", "text/event-stream"),
            ], status: 200, now: now)
        #expect(outcome.ignored.isEmpty, "\(outcome.ignored)")
        #expect(outcome.readings.map(\.window).sorted() == ["five_hour", "seven_day", "seven_day_opus"])
        let fiveHour = outcome.readings.first { $0.window == "five_hour" }
        #expect(fiveHour?.utilization == 0.72 && fiveHour?.status == "allowed_warning")
        #expect(fiveHour?.resetsAt == now.addingTimeInterval(3600))
        #expect(!outcome.refused)
    }

    @Test func aRejectedWindowAndA429AreRefusalsThatSayWhenTheyEnd() {
        let rejected = LimitHeaders.read(
            [
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-representative-claim", "seven_day"),
                ("anthropic-ratelimit-unified-reset", epoch(7200)),
                ("anthropic-ratelimit-unified-7d-utilization", "1"),
                ("anthropic-ratelimit-unified-7d-reset", epoch(7200)),
            ], status: 429, now: now)
        #expect(rejected.refused)
        #expect(
            rejected.readings == [
                LimitReading(
                    window: "seven_day", status: "rejected", utilization: 1, resetsAt: now.addingTimeInterval(7200),
                    observedAt: now)
            ])
        // A bare 429 (an API key's) ends at its retry-after; a 529 is the API's load, not the account's limit.
        let bare = LimitHeaders.read([("retry-after", "30")], status: 429, now: now)
        #expect(bare.refused && bare.readings.first?.window == "rate_limited")
        #expect(bare.readings.first?.resetsAt == now.addingTimeInterval(30))
        let overloaded = LimitHeaders.read([("retry-after", "5")], status: 529, now: now)
        #expect(!overloaded.refused && overloaded.readings.first?.window == "overloaded")
        let silent = LimitHeaders.read([], status: 429, now: now)
        #expect(silent.readings.first?.resetsAt == now.addingTimeInterval(LimitHeaders.defaultRetry))
    }

    @Test func anAPIKeysPerMinuteLimitsAreRead() {
        let reset = now.addingTimeInterval(40).formatted(.iso8601)
        let outcome = LimitHeaders.read(
            [
                ("anthropic-ratelimit-requests-limit", "50"), ("anthropic-ratelimit-requests-remaining", "10"),
                ("anthropic-ratelimit-requests-reset", reset),
                ("anthropic-ratelimit-input-tokens-limit", "40000"),
                ("anthropic-ratelimit-input-tokens-remaining", "0"),
                ("anthropic-ratelimit-input-tokens-reset", reset),
            ], status: 200, now: now)
        #expect(outcome.ignored.isEmpty, "\(outcome.ignored)")
        let requests = outcome.readings.first { $0.window == "requests" }
        #expect(requests?.utilization == 0.8 && requests?.status == "allowed")
        #expect(requests?.resetsAt == now.addingTimeInterval(40))
        let input = outcome.readings.first { $0.window == "input_tokens" }
        #expect(input?.utilization == 1 && input?.status == "rejected")
    }

    /// An answer naming 300 model windows: the plan's two and the representative's are read,
    /// with the first others up to the cap, and the rest is said once, not read.
    @Test func anAnswerOfManyModelWindowsIsReadUpToTheCap() {
        var headers: [(String, String)] = [
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-representative-claim", "seven_day_zz"),
            ("anthropic-ratelimit-unified-5h-utilization", "0.1"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.2"),
            ("anthropic-ratelimit-unified-7d_zz-utilization", "1"),
        ]
        for index in 0..<300 {
            headers.append(("anthropic-ratelimit-unified-7d_m\(index)-utilization", "0.5"))
            headers.append(("anthropic-ratelimit-unified-7d_m\(index)-reset", epoch(3600)))
        }
        let outcome = LimitHeaders.read(headers, status: 429, now: now)
        let windows = outcome.readings.map(\.window)
        #expect(Set(windows).count == windows.count)
        #expect(windows.filter { $0.hasPrefix("seven_day_") }.count == LimitHeaders.maxModelWindows, "\(windows)")
        #expect(windows.contains("five_hour") && windows.contains("seven_day"))
        #expect(outcome.readings.first { $0.window == "seven_day_zz" }?.isRejected == true && outcome.refused)
        #expect(
            outcome.ignored == ["anthropic-ratelimit-unified-7d_*: 301 model windows, 293 past the first 8 ignored"])
    }

    /// A reader of many answers (the gateway) keeps the fixed windows and at most the cap of
    /// model windows: one it keeps takes new readings, a new one past the cap is left out.
    @Test func aReaderOfManyAnswersKeepsABoundedSetOfWindows() {
        func reading(_ window: String) -> LimitReading {
            LimitReading(window: window, status: "allowed", utilization: 0.5, resetsAt: nil, observedAt: now)
        }
        var kept: Set<String> = []
        for answer in 0..<4 {
            let readings =
                ["five_hour", "seven_day", "requests", "seven_day_opus"].map(reading)
                + (0..<300).map { reading("seven_day_a\(answer)x\($0)") }
            let (admitted, leftOut) = LimitHeaders.admitted(readings, keeping: kept)
            kept.formUnion(admitted.map(\.window))
            #expect(admitted.count + leftOut.count == readings.count)
            #expect(admitted.contains { $0.window == "seven_day_opus" }, "answer \(answer): a kept window stays")
        }
        #expect(kept.filter { $0.hasPrefix("seven_day_") }.count == LimitHeaders.maxModelWindows, "\(kept.sorted())")
        #expect(kept.isSuperset(of: ["five_hour", "seven_day", "requests", "seven_day_opus"]))
        let odd = LimitHeaders.admitted([reading("anything_else"), reading("seven_day_../x")], keeping: [])
        #expect(odd.admitted.isEmpty && odd.leftOut.count == 2)
    }

    /// Negative, huge, non-numeric, a reset in the past or years ahead: each is ignored and
    /// said, never believed; what is left of the answer still counts.
    @Test func hostileHeaderValuesAreIgnoredAndSaid() {
        let outcome = LimitHeaders.read(
            [
                ("anthropic-ratelimit-unified-5h-utilization", "-0.5"),
                ("anthropic-ratelimit-unified-5h-reset", epoch(-60)),
                ("anthropic-ratelimit-unified-7d-utilization", "1e300"),
                ("anthropic-ratelimit-unified-7d-reset", epoch(3 * 365 * 86_400)),
                ("anthropic-ratelimit-unified-7d_sonnet-utilization", "NaN"),
                ("anthropic-ratelimit-unified-7d_sonnet-reset", "soon"),
                ("anthropic-ratelimit-unified-7d_oi-utilization", "0.5"),
                ("anthropic-ratelimit-unified-7d_oi-reset", "99999999999999999999"),
                ("anthropic-ratelimit-unified-../../x-utilization", "0.9"),
                ("anthropic-ratelimit-unified-status", "maybe"),
                ("anthropic-ratelimit-requests-limit", "-5"), ("anthropic-ratelimit-requests-remaining", "1"),
                ("anthropic-ratelimit-tokens-limit", "100"), ("anthropic-ratelimit-tokens-remaining", "500"),
            ], status: 200, now: now)
        #expect(outcome.ignored.count == 10, "\(outcome.ignored)")
        #expect(outcome.ignored.contains { $0.contains("5h-reset") && $0.contains("in the past") })
        #expect(outcome.ignored.contains { $0.contains("7d-reset") && $0.contains("days ahead") })
        #expect(outcome.ignored.contains { $0.contains("7d-utilization") && $0.contains("not a fraction") })
        #expect(outcome.ignored.contains { $0.contains("7d_sonnet-utilization") && $0.contains("not a number") })
        // Only the one believable number is kept, with no reset (its reset was not believable).
        #expect(outcome.readings.map(\.window) == ["seven_day_oi"], "\(outcome.readings)")
        #expect(outcome.readings.first?.utilization == 0.5 && outcome.readings.first?.resetsAt == nil)
        #expect(!outcome.refused)
        // A refusal whose retry-after is not a number still ends, after the default wait.
        let refusal = LimitHeaders.read([("retry-after", "forever")], status: 429, now: now)
        #expect(refusal.ignored.count == 1 && refusal.refused)
        #expect(refusal.readings.first?.resetsAt == now.addingTimeInterval(LimitHeaders.defaultRetry))
        let distant = LimitHeaders.read([("retry-after", "99999999")], status: 429, now: now)
        #expect(distant.ignored.first?.contains("days ahead") == true)
    }

    @Test func theOfferPausesPastItsShareUntilTheLatestResetAndNotAfter() {
        let shares = CapacityShares(fiveHour: 0.6, weekly: 0.9, perMinute: 1)
        func reading(_ window: String, _ used: Double?, resetIn: TimeInterval?, status: String = "allowed")
            -> LimitReading
        {
            LimitReading(
                window: window, status: status, utilization: used, resetsAt: resetIn.map(now.addingTimeInterval),
                observedAt: now)
        }
        #expect(shares.pause(for: [reading("five_hour", 0.59, resetIn: 600)], now: now) == nil)
        let pause = shares.pause(
            for: [reading("five_hour", 0.6, resetIn: 600), reading("seven_day", 0.95, resetIn: 86_400)], now: now)
        #expect(pause?.window == "seven_day" && pause?.until == now.addingTimeInterval(86_400))
        #expect(pause?.reason.contains("past the share of 90 %") == true)
        // Once its reset has passed, a reading says nothing: the offer is back.
        #expect(
            shares.pause(for: [reading("five_hour", 0.99, resetIn: 600)], now: now.addingTimeInterval(601)) == nil)
        // A share of 1 gives the whole window: only the limit itself, or a refusal, pauses.
        #expect(shares.pause(for: [reading("requests", 0.99, resetIn: 30)], now: now) == nil)
        #expect(shares.pause(for: [reading("requests", 1, resetIn: 30)], now: now) != nil)
        #expect(
            shares.pause(for: [reading("rate_limited", nil, resetIn: 30, status: "rejected")], now: now)?.until
                == now.addingTimeInterval(30))
        // Past the share with no believable reset: held a while, then tried again.
        #expect(
            shares.pause(for: [reading("five_hour", 0.8, resetIn: nil)], now: now)?.until
                == now.addingTimeInterval(CapacityShares.unknownResetHold))
    }
}
