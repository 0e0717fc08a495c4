import Foundation
import JobRunner
import MarketFlows
import Participant
import Workspace

/// What a follow-up continues: the conversation an earlier task (or local job) left in this
/// home, and, for a workspace job, the workspace as that task left it: the archive it sent with
/// its patch applied (unless the follow-up sends a directory as it is now).
struct FollowUp {
    var parent: String
    var transcript: ClaudeTranscript
    var workspace: WorkspacePacker.Packed?

    static func load(_ parent: String, paths: ParticipantPaths, withWorkspace: Bool, limits: WorkspaceLimits)
        throws -> FollowUp
    {
        let conversations = ConversationFiles(directory: paths.conversationsDirectory)
        let transcript: ClaudeTranscript?
        do {
            transcript = try conversations.transcript(parent)
        } catch {
            throw CLIError("the conversation of \(parent) here does not check out: \(error)", exitCode: 2)
        }
        guard let transcript else {
            throw CLIError(
                "\(parent) left no conversation in this home (not a claude job, or its transcript did not come back): nothing was sent",
                exitCode: 2)
        }
        var followUp = FollowUp(parent: parent, transcript: transcript)
        let files = WorkspaceFiles(directory: paths.workspacesDirectory)
        if withWorkspace, let (archive, _) = try files.load(parent) {
            let base = try WorkspaceTree.read(tar: archive, limits: WorkspaceLimits(maxBytes: .max, maxFiles: .max))
                .tree
            let directory = FileManager.default.temporaryDirectory.appending(
                path: "cmm-follow-up-\(UUID().uuidString.lowercased())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            try base.write(into: directory)
            if let patch = try files.patch(parent) { _ = try WorkspacePatch(parsing: patch).apply(to: directory) }
            followUp.workspace = try WorkspacePacker(options: .init(includeIgnored: true, limits: limits)).pack(
                directory)
        }
        return followUp
    }
}
