import Foundation
import JobRunner
import Testing

enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appending(
        path: "Fixtures/claude-stream-json")

    static func lines(_ name: String) throws -> [String] {
        try String(contentsOf: directory.appending(path: "\(name).jsonl"), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    static func parse(_ name: String) throws -> (StreamJSONParser, [StreamEvent]) {
        var parser = StreamJSONParser()
        var events: [StreamEvent] = []
        for line in try lines(name) { events += parser.parse(line: line) }
        return (parser, events)
    }
}

@Suite struct StreamJSONParserTests {
    /// `--include-partial-messages`: text deltas come as they stream, other stream events are
    /// skipped, and the whole message still follows as text.
    @Test func partialMessagesGiveTextDeltas() {
        var parser = StreamJSONParser()
        let delta =
            #"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}},"session_id":"s"}"#
        let toolDelta =
            #"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}}"#
        let start = #"{"type":"stream_event","event":{"type":"message_start","message":{"id":"m"}}}"#
        #expect(parser.parse(line: delta) == [.textDelta("Hel")])
        #expect(parser.parse(line: toolDelta) == [.skipped(type: "stream_event")])
        #expect(parser.parse(line: start) == [.skipped(type: "stream_event")])
        #expect(
            parser.parse(line: #"{"type":"stream_event","event":"not an object"}"#) == [.skipped(type: "stream_event")])
    }

    @Test func successText() throws {
        let (parser, events) = try Fixtures.parse("success-text")
        #expect(
            events.first
                == .initialized(model: "claude-sonnet-4-6", tools: ["Read", "Grep", "Glob"], version: "2.1.220"))
        #expect(events.contains(.text("The capital of France is Paris.")))
        let result = try #require(parser.result)
        #expect(!result.isError && result.subtype == "success" && result.text == "The capital of France is Paris.")
        #expect(result.usage["claude-sonnet-4-6"]?.inputTokens == 12)
        #expect(result.usage["claude-sonnet-4-6"]?.outputTokens == 9)
        #expect(result.usage["claude-sonnet-4-6"]?.cacheReadInputTokens == 4210)
    }

    @Test func toolUseSumsModelUsageAndCountsSplitMessagesOnce() throws {
        let (parser, events) = try Fixtures.parse("tool-use")
        #expect(events.contains(.toolUse(name: "Bash")))
        #expect(events.contains(.toolResult(isError: false)))
        let result = try #require(parser.result)
        #expect(Set(result.usage.keys) == ["claude-opus-4-6", "claude-haiku-4-5"])
        #expect(result.total.inputTokens == 318 && result.total.outputTokens == 75)
        #expect(abs(result.total.costUSD - 0.0912) < 1e-9)
        // msg_…001 spans two lines but counts once: 3+5 input, 41+12 output.
        #expect(parser.assistantUsage.inputTokens == 8 && parser.assistantUsage.outputTokens == 53)
        #expect(
            parser.rateLimits == [
                RateLimitNotice(
                    window: "five_hour", status: "allowed_warning",
                    resetsAt: Date(timeIntervalSince1970: 1_764_086_400), utilization: 0.82)
            ])
    }

    /// A job prints what it likes: counts past Int64, negative or of 1e300 are bounded, and sums
    /// of many of them do not trap (a total of two such counts crashed the parser's callers).
    @Test func hostileUsageCountsAreBoundedAndSumWithoutTrapping() throws {
        var parser = StreamJSONParser()
        for (index, count) in ["9223372036854775807", "-9223372036854775808", "1e300", "18446744073709551615"]
            .enumerated()
        {
            _ = parser.parse(
                line:
                    #"{"type":"assistant","message":{"id":"m\#(index)","content":[],"usage":{"input_tokens":\#(count),"output_tokens":\#(count),"cache_read_input_tokens":\#(count)}}}"#
            )
        }
        #expect(parser.assistantUsage.inputTokens >= 0 && parser.assistantUsage.inputTokens <= 4 << 40)
        _ = parser.parse(
            line:
                #"{"type":"result","subtype":"success","usage":{"input_tokens":9223372036854775807,"output_tokens":9223372036854775807}}"#
        )
        let result = try #require(parser.result)
        #expect(result.total.allTokens == 2 << 40)
        var many = ModelUsage()
        many.inputTokens = .max
        #expect((many + many).inputTokens == .max)
        #expect(many.allTokens == .max)
    }

    @Test func maxTurnsIsAnErrorWithItsReason() throws {
        let (parser, _) = try Fixtures.parse("error-max-turns")
        let result = try #require(parser.result)
        #expect(result.isError && result.subtype == "error_max_turns")
        #expect(result.errors == ["Reached maximum number of turns (1)"])
        #expect(result.text == nil)
        #expect(result.total.inputTokens == 20)
    }

    @Test func usageLimitIsRecorded() throws {
        let (parser, _) = try Fixtures.parse("usage-limit")
        #expect(parser.rateLimits.first?.status == "rejected" && parser.rateLimits.first?.window == "five_hour")
        let result = try #require(parser.result)
        #expect(result.isError && result.usage.isEmpty)
    }

    @Test func noisyStreamsLoseNothing() throws {
        let (parser, events) = try Fixtures.parse("noisy")
        #expect(events.contains(.skipped(type: "system")) && events.contains(.skipped(type: "tool_progress")))
        #expect(events.contains(.notJSON("Warning: this line is not JSON")))
        #expect(parser.notJSONLines == 2)  // the warning and the cut-off last line
        #expect(parser.result?.text == "ok")
        #expect(parser.result?.usage["claude-haiku-4-5"]?.outputTokens == 1)
    }
}
