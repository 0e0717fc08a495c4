import Foundation

/// The conversation a claude job belongs to. Every claude job runs under a session id of its
/// own choosing (`--session-id`), or continues an earlier one from its transcript (`--resume`).
/// The CLI keeps its state in a job-private directory on the container's /tmp tmpfs
/// (`stateDirectory`); the transcript comes back in the job's
/// report, and nothing of it stays with the provider.
public struct ClaudeConversation: Sendable, Equatable {
    public var sessionID: String
    /// The earlier turns, when the job continues a conversation; nil for a new one.
    public var transcript: ClaudeTranscript?

    /// A new conversation with a fresh session id.
    public init() {
        sessionID = UUID().uuidString.lowercased()
        transcript = nil
    }

    /// Continues the conversation `transcript` holds.
    public init(continuing transcript: ClaudeTranscript) {
        sessionID = transcript.sessionID
        self.transcript = transcript
    }

    /// Where the CLI keeps its state in the job container (`CLAUDE_CONFIG_DIR`): on the /tmp
    /// tmpfs, gone with the container.
    public static let stateDirectory = "/tmp/cmm-claude"

    /// The transcript's path in the container, relative to `/`: the CLI files a session under
    /// its working directory (/work, with `/` as `-`).
    public static func transcriptPath(sessionID: String) -> String {
        "\(stateDirectory.dropFirst())/projects/-work/\(sessionID).jsonl"
    }

    public var transcriptPath: String { Self.transcriptPath(sessionID: sessionID) }

    /// The CLI's flags for this conversation.
    var flags: [String] { transcript == nil ? ["--session-id", sessionID] : ["--resume", sessionID] }
}

/// A Claude Code session transcript: JSON lines, as the CLI writes them. It comes from a job
/// (the provider's side) or from a requester (a follow-up), so it is checked before it is used:
/// its size, that every line is a JSON object, and that no line claims another session.
public struct ClaudeTranscript: Sendable, Equatable {
    public let sessionID: String
    public let data: Data

    /// Checks `data` as the transcript of `sessionID`; throws saying what is wrong.
    public init(checking data: Data, sessionID: String, maxBytes: Int64) throws(TranscriptError) {
        guard let uuid = UUID(uuidString: sessionID), uuid.uuidString.lowercased() == sessionID else {
            throw TranscriptError(
                "the session id \(sessionID.prefix(64).debugDescription) is not a lowercase UUID")
        }
        guard Int64(data.count) <= maxBytes else {
            throw TranscriptError("the transcript is \(data.count) bytes; limits.maxTranscriptBytes allows \(maxBytes)")
        }
        guard String(validating: data, as: UTF8.self) != nil else {
            throw TranscriptError("the transcript is not UTF-8")
        }
        var lineNumber = 0
        var userTurns = 0
        for line in data.split(separator: 0x0a, omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x0d || $0 == 0x09 }) { continue }
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
                throw TranscriptError("line \(lineNumber) of the transcript is not a JSON object")
            }
            if let claimed = object["sessionId"], claimed as? String != sessionID {
                throw TranscriptError(
                    "line \(lineNumber) of the transcript belongs to another session (\(String(describing: claimed).prefix(64)))"
                )
            }
            if object["type"] as? String == "user" { userTurns += 1 }
        }
        guard userTurns > 0 else { throw TranscriptError("the transcript holds no user turn") }
        self.sessionID = sessionID
        self.data = data
    }

    /// The user prompts and assistant texts, in order, for a person to read (`result --transcript`).
    public var turns: [(role: String, text: String)] {
        var turns: [(role: String, text: String)] = []
        for line in data.split(separator: 0x0a) {
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any],
                let type = object["type"] as? String, type == "user" || type == "assistant",
                object["isSidechain"] as? Bool != true,
                let message = object["message"] as? [String: Any]
            else { continue }
            let text: String
            if let content = message["content"] as? String {
                text = content
            } else if let blocks = message["content"] as? [[String: Any]] {
                text = blocks.compactMap { block -> String? in
                    switch block["type"] as? String {
                    case "text": block["text"] as? String
                    case "tool_use": "[\(block["name"] as? String ?? "tool")]"
                    default: nil
                    }
                }.joined(separator: "\n")
            } else {
                continue
            }
            if !text.isEmpty { turns.append((type, text)) }
        }
        return turns
    }

    /// The largest transcript accepted unless the provider says otherwise (`limits.maxTranscriptBytes`).
    public static let defaultMaxBytes: Int64 = 16 << 20
}

public struct TranscriptError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
