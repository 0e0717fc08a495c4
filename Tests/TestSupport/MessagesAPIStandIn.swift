import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// A loopback stand-in for the Claude Messages API, for the real Claude Code CLI: plain HTTP
/// (`claude.apiBaseURL=http://127.0.0.1:PORT`), `POST /v1/messages` answered with server-sent
/// events shaped like the real API's, and scripted turns so the CLI really calls tools.
///
/// A script is picked by a marker in the conversation's first user message ("script: NAME");
/// each request of that conversation that offers tools gets the next turn, counted by the
/// assistant messages it already holds. Requests without tools (the CLI's side requests) and
/// conversations without a script get a short text answer. Every request is recorded.
public final class MessagesAPIStandIn: Sendable {
    public enum Turn: Sendable {
        case text(String)
        /// A tool call: the tool's name and its input as JSON.
        case toolUse(String, String)
    }

    public struct Received: Sendable {
        public var path: String
        public var headers: [String: String]
        public var body: [String: any Sendable]

        /// The text of every `tool_result` block the request carries, in order.
        public var toolResults: [String] {
            let messages = body["messages"] as? [[String: any Sendable]] ?? []
            return messages.flatMap { message -> [String] in
                guard let blocks = message["content"] as? [[String: any Sendable]] else { return [] }
                return blocks.filter { $0["type"] as? String == "tool_result" }.map { block in
                    if let text = block["content"] as? String { return text }
                    let parts = block["content"] as? [[String: any Sendable]] ?? []
                    return parts.compactMap { $0["text"] as? String }.joined(separator: "\n")
                }
            }
        }

        public var toolNames: [String] {
            (body["tools"] as? [[String: any Sendable]] ?? []).compactMap { $0["name"] as? String }
        }
    }

    /// What an answer carries besides its turn: the account's limit headers, or a refusal
    /// (429 with `retry-after`) instead of the turn.
    public struct Answer: Sendable {
        public var status: Int
        public var headers: [(String, String)]
        public init(status: Int = 200, headers: [(String, String)] = []) {
            self.status = status
            self.headers = headers
        }
    }

    public let port: Int
    public var url: String { "http://127.0.0.1:\(port)" }
    private let box: LockedBox<[Received]>
    public var received: [Received] { box.withLock { $0 } }
    /// The requests that belong to a scripted conversation (they offer tools).
    public var conversation: [Received] { received.filter { !$0.toolNames.isEmpty } }

    private init(port: Int, box: LockedBox<[Received]>) {
        self.port = port
        self.box = box
    }

    /// Runs the stand-in for the duration of `body`.
    public static func with<T: Sendable>(
        scripts: [String: [Turn]] = [:], defaultText: String = "hello from the stand-in",
        deltaPause: Duration = .zero, answer: @escaping @Sendable (Received) -> Answer = { _ in Answer() },
        _ body: (MessagesAPIStandIn) async throws -> T
    ) async throws -> T {
        let box = LockedBox<[Received]>([])
        let router = Router()
        router.on("/api/hello", method: .head) { _, _ in Response(status: .ok) }
        router.get("/api/hello") { _, _ in Response(status: .ok) }
        router.post("/v1/messages/count_tokens") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"input_tokens":5}"#)))
        }
        router.post("/v1/messages") { request, _ -> Response in
            let data = Data(buffer: try await request.body.collect(upTo: 64 << 20))
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
            var headers: [String: String] = [:]
            for field in request.headers { headers[field.name.canonicalName.lowercased()] = field.value }
            let received = Received(
                path: request.uri.path, headers: headers, body: sendable(object) as? [String: any Sendable] ?? [:])
            box.withLock { $0.append(received) }
            let extra = answer(received)
            var extraHeaders = HTTPFields()
            for (name, value) in extra.headers {
                if let field = HTTPField.Name(name) { extraHeaders.append(HTTPField(name: field, value: value)) }
            }
            if extra.status != 200 {
                var headers = extraHeaders
                headers[.contentType] = "application/json"
                return Response(
                    status: HTTPResponse.Status(code: extra.status), headers: headers,
                    body: ResponseBody(
                        byteBuffer: ByteBuffer(
                            string:
                                #"{"type":"error","error":{"type":"rate_limit_error","message":"the stand-in's account is at its limit"}}"#
                        )))
            }
            let model = object["model"] as? String ?? "claude-test"
            let messages = object["messages"] as? [[String: Any]] ?? []
            var turn = Turn.text(defaultText)
            if !received.toolNames.isEmpty,
                let script = scripts.first(where: { firstUserText(messages).contains("script: \($0.key)") })?.value
            {
                let index = messages.count { $0["role"] as? String == "assistant" }
                turn = index < script.count ? script[index] : .text(defaultText)
            }
            let sse = events(turn, model: model)
            if deltaPause > .zero, object["stream"] as? Bool == true {
                // Each event written on its own, with a pause after every text delta.
                let pieces = sse.components(separatedBy: "\n\n").filter { !$0.isEmpty }
                return Response(
                    status: .ok,
                    headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"] + extraHeaders,
                    body: ResponseBody { writer in
                        for piece in pieces {
                            try await writer.write(ByteBuffer(string: piece + "\n\n"))
                            if piece.contains("text_delta") { try await Task.sleep(for: deltaPause) }
                        }
                        try await writer.finish(nil)
                    })
            }
            guard object["stream"] as? Bool == true else {
                return Response(
                    status: .ok, headers: [.contentType: "application/json"] + extraHeaders,
                    body: ResponseBody(byteBuffer: ByteBuffer(string: json(turn, model: model))))
            }
            return Response(
                status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"] + extraHeaders,
                body: ResponseBody(byteBuffer: ByteBuffer(string: sse)))
        }
        let portBox = LockedBox<Int?>(nil)
        let application = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: nil),
            onServerRunning: { channel in portBox.withLock { $0 = channel.localAddress?.port } },
            logger: {
                var logger = Logger(label: "messages-stand-in")
                logger.logLevel = .critical
                return logger
            }())
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await application.runService(gracefulShutdownSignals: []) }
            var port: Int?
            for _ in 0..<400 where port == nil {
                try await Task.sleep(for: .milliseconds(10))
                port = portBox.withLock { $0 }
            }
            guard let port else { throw CLIRunnerError(description: "the Messages API stand-in did not start") }
            let standIn = MessagesAPIStandIn(port: port, box: box)
            defer { group.cancelAll() }
            return try await body(standIn)
        }
    }

    static func firstUserText(_ messages: [[String: Any]]) -> String {
        guard let first = messages.first(where: { $0["role"] as? String == "user" }) else { return "" }
        if let text = first["content"] as? String { return text }
        return (first["content"] as? [[String: Any]] ?? []).compactMap { $0["text"] as? String }.joined(separator: "\n")
    }

    static let usage =
        #""usage":{"input_tokens":12,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"output_tokens":1}"#

    static func escaped(_ text: String) -> String {
        let data = try! JSONSerialization.data(withJSONObject: [text], options: [.withoutEscapingSlashes])
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }

    static func events(_ turn: Turn, model: String) -> String {
        func event(_ name: String, _ data: String) -> String { "event: \(name)\ndata: \(data)\n\n" }
        var out = event(
            "message_start",
            #"{"type":"message_start","message":{"id":"msg_\#(UUID().uuidString.prefix(8))","type":"message","role":"assistant","model":"\#(model)","content":[],"stop_reason":null,"stop_sequence":null,\#(usage)}}"#
        )
        let stopReason: String
        switch turn {
        case .text(let text):
            out += event(
                "content_block_start",
                #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#)
            // A delta per word, as the API streams it.
            var words = text.split(separator: " ", omittingEmptySubsequences: false).map { $0 + " " }
            if var last = words.popLast() {
                last.removeLast()
                words.append(last)
            }
            for word in words where !word.isEmpty {
                out += event(
                    "content_block_delta",
                    #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":\#(escaped(String(word)))}}"#
                )
            }
            stopReason = "end_turn"
        case .toolUse(let name, let input):
            let id = "toolu_\(UUID().uuidString.prefix(12).lowercased())"
            out += event(
                "content_block_start",
                #"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"\#(id)","name":"\#(name)","input":{}}}"#
            )
            out += event(
                "content_block_delta",
                #"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":\#(escaped(input))}}"#
            )
            stopReason = "tool_use"
        }
        out += event("content_block_stop", #"{"type":"content_block_stop","index":0}"#)
        out += event(
            "message_delta",
            #"{"type":"message_delta","delta":{"stop_reason":"\#(stopReason)","stop_sequence":null},"usage":{"output_tokens":9}}"#
        )
        out += event("message_stop", #"{"type":"message_stop"}"#)
        return out
    }

    static func json(_ turn: Turn, model: String) -> String {
        let content: String
        switch turn {
        case .text(let text): content = #"{"type":"text","text":\#(escaped(text))}"#
        case .toolUse(let name, let input):
            content = #"{"type":"tool_use","id":"toolu_1","name":"\#(name)","input":\#(input)}"#
        }
        return
            #"{"id":"msg_1","type":"message","role":"assistant","model":"\#(model)","content":[\#(content)],"stop_reason":"end_turn",\#(usage)}"#
    }
}

/// JSON as `Sendable` values (dictionaries, arrays, strings, numbers).
func sendable(_ value: Any) -> any Sendable {
    switch value {
    case let dictionary as [String: Any]: dictionary.mapValues { sendable($0) }
    case let array as [Any]: array.map { sendable($0) }
    case let string as String: string
    case let number as NSNumber: number.doubleValue
    default: "\(value)"
    }
}
