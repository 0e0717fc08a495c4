import Foundation
import JobRunner
import MarketCore

/// A requester's conversations on disk, one per task (or local job): the transcript that came
/// back (`ID.jsonl`), the one sent with a follow-up (`ID.sent.jsonl`, to seal again if the task
/// moves to another provider), and which earlier task it continues (`ID.json`). The provider
/// keeps none of this; the requester owns the conversation. A transcript refused on arrival
/// leaves why (`ID.jsonl.refused`). Files 0600 in a 0700 directory.
public struct ConversationFiles: Sendable {
    public let directory: URL
    let files: PrivateFiles

    public init(directory: URL) {
        self.directory = directory
        files = PrivateFiles(directory: directory)
    }

    struct Meta: Codable {
        var sessionId: String
        var parent: String?
    }

    /// A follow-up as posted: the transcript it sends, and the task (or job) it continues.
    public func saveSent(_ transcript: ClaudeTranscript, parent: String, for id: String) throws {
        try files.write(transcript.data, to: try files.url(id, ".sent.jsonl"))
        try files.write(
            try JSONEncoder().encode(Meta(sessionId: transcript.sessionID, parent: parent)),
            to: try files.url(id, ".json"))
    }

    /// The transcript a follow-up sends, or nil when the task starts a new conversation.
    public func sent(_ id: String, maxBytes: Int64 = WireLimits.maxTranscriptBytes) throws -> ClaudeTranscript? {
        guard let meta = try meta(id), let data = try? Data(contentsOf: try files.url(id, ".sent.jsonl")) else {
            return nil
        }
        return try ClaudeTranscript(checking: data, sessionID: meta.sessionId, maxBytes: maxBytes)
    }

    /// The conversation as it stands after the task: what a follow-up continues.
    public func save(_ transcript: ClaudeTranscript, for id: String, parent: String? = nil) throws {
        let parent = try parent ?? meta(id)?.parent
        try files.write(transcript.data, to: try files.url(id, ".jsonl"))
        try files.write(
            try JSONEncoder().encode(Meta(sessionId: transcript.sessionID, parent: parent)),
            to: try files.url(id, ".json"))
    }

    /// The transcript a task (or job) left, checked again as it is read.
    public func transcript(_ id: String, maxBytes: Int64 = WireLimits.maxTranscriptBytes) throws -> ClaudeTranscript? {
        guard let meta = try meta(id), let data = try? Data(contentsOf: try files.url(id, ".jsonl")) else { return nil }
        return try ClaudeTranscript(checking: data, sessionID: meta.sessionId, maxBytes: maxBytes)
    }

    /// The transcript came back and was refused (not the one the result named, or not a valid
    /// transcript): why, so that `result` says it instead of waiting for another.
    public func saveRefusal(_ reason: String, for id: String) throws {
        try files.saveRefusal(reason, for: id, suffix: ".jsonl.refused")
    }

    public func refusal(_ id: String) -> String? { files.refusal(id, suffix: ".jsonl.refused") }

    /// The tasks (or jobs) of a conversation up to `id`, oldest first.
    public func chain(_ id: String) throws -> [String] {
        var chain = [id]
        var current = id
        while let parent = try meta(current)?.parent, !chain.contains(parent), chain.count < 1000 {
            chain.insert(parent, at: 0)
            current = parent
        }
        return chain
    }

    func meta(_ id: String) throws -> Meta? {
        guard let data = try? Data(contentsOf: try files.url(id, ".json")) else { return nil }
        return try? JSONDecoder().decode(Meta.self, from: data)
    }
}
