import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketProtocol
import TestSupport
import Testing
import Workspace

/// A provider that writes to the requester's terminal, or sends a patch or a transcript that
/// does not parse: played by hand over a market connection, against the real `submit` and
/// `result` of a requester home. No Docker: the provider runs nothing.
@Suite(.serialized) struct HostilePeerTests {
    /// OSC 52 (a clipboard write), CSI 2J (clear the screen), an 8-bit CSI and a right-to-left override.
    static let hostile = "\u{1B}]52;c;cHduZWQ=\u{07}\u{1B}[2J\u{9B}31m\u{202E}txt.exe"
    static let shown = "\\u{1B}]52;c;cHduZWQ=\\u{07}\\u{1B}[2J\\u{9B}31m\\u{202E}txt.exe"

    /// Whether `text` holds anything a terminal would obey (escape, C1, bidi) raw.
    static func raw(_ text: String) -> Bool {
        text.unicodeScalars.contains { $0 == "\u{1B}" || $0 == "\u{9B}" || $0 == "\u{202E}" }
    }

    /// A provider played by hand: its keys, its connection, and what it sends.
    struct Provider {
        let connection: MarketConnection

        static func keys() throws -> KeyRing { KeyRing.inMemory(sealing: try SealingKeySet.generate(at: Date())) }

        func advertise() async throws {
            try await connection.request(
                .offerAdvertise,
                AdvertiseBody(
                    price: 1_000_000, slots: 1, maxWorkspaceBytes: 1 << 20, maxWorkspaceFiles: 100)
            ).throwIfError()
        }

        func send(_ type: MessageType, _ body: some Encodable) async throws {
            try await connection.request(type, body).throwIfError()
        }

        /// `blob` sealed to the requester in `blob.chunk`s; what a result says of it.
        func sendBlob(_ data: Data, as blob: BlobChunkBody.Blob, taskId: String, to requester: PublicKeyDocument)
            async throws -> JobContent.BlobInfo
        {
            let (info, chunks) = try SealedBlob.seal(data, to: requester, purpose: .result)
            for (index, chunk) in chunks.enumerated() {
                try await send(
                    .blobChunk,
                    BlobChunkBody(taskId: taskId, blob: blob, index: index, count: chunks.count, sealed: chunk))
            }
            return info
        }

        /// The next task assigned to it, once its payload came, with the requester's key document.
        func nextTask() async throws -> (taskId: String, requester: PublicKeyDocument) {
            let assigned = try await connection.next(.taskAssigned, timeout: .seconds(60)).decodeBody(AssignedBody.self)
            _ = try await connection.next(.payloadDeliver, taskId: assigned.taskId, timeout: .seconds(60))
            let document = try PublicKeyDocument.verified(from: Data(assigned.requesterKeyDocument.utf8))
            return (assigned.taskId, document)
        }

        /// Streams `items`, then sends the result `fields` (merged into a succeeded job).
        func finish(
            _ taskId: String, requester: PublicKeyDocument, items: [JobContent.Item] = [], result fields: [String: Any]
        ) async throws {
            if !items.isEmpty {
                struct Batch: Encodable {
                    var taskId: String
                    var items: [JobContent.Item]
                }
                let (sealed, _) = try JobContent.seal(
                    Batch(taskId: taskId, items: items), to: requester, purpose: .result)
                try await send(.jobEvent, SealedBody(taskId: taskId, sealed: sealed, seq: 0))
            }
            var object: [String: Any] = [
                "v": 1, "taskId": taskId, "state": "succeeded", "exitCode": 0, "output": "", "truncated": false,
                "usage": ["inputTokens": 0, "outputTokens": 0], "metered": false, "seconds": 1, "redactions": 0,
            ]
            object.merge(fields) { $1 }
            let plaintext = try JSONSerialization.data(withJSONObject: object)
            let sealed = try Sealer.seal(plaintext, to: try requester.publicKeys(), purpose: .result)
            try await send(
                .jobResult,
                ResultBody(
                    taskId: taskId, sealed: sealed.base64EncodedString(), resultHash: JobContent.sha256Hex(plaintext)))
        }
    }

    static func blobObject(_ info: JobContent.BlobInfo) -> [String: Any] {
        ["bytes": info.bytes, "sha256": info.sha256, "chunks": info.chunks]
    }

    static func patchObject(_ info: JobContent.BlobInfo?, files: [WorkspacePatch.FileChange] = []) throws
        -> [String: Any]
    {
        let changes = try JSONSerialization.jsonObject(with: JSONEncoder().encode(files))
        var object: [String: Any] = ["baseHash": "sha256:" + String(repeating: "0", count: 64), "files": changes]
        object["skipped"] = [String]()
        if let info { object["blob"] = blobObject(info) }
        return object
    }

    /// A requester's directory with one file, to send as a workspace.
    static func project(_ flow: Flow, _ name: String) throws -> URL {
        let dir = flow.directory.file(name)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data("one\n".utf8).write(to: dir.appending(path: "todo.txt"))
        return dir
    }

    @Test func nothingAPeerWritesReachesTheRequestersTerminalRaw() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let requester = try await flow.requester("tess")
        let dir = try Self.project(flow, "tess-project")
        // Left out by packing, and named for the terminal: a link that points outside.
        try FileManager.default.createSymbolicLink(
            atPath: dir.appending(path: "left\u{202E}gnp.sh").path, withDestinationPath: "/etc/hostname")

        let base = try WorkspaceTree(entries: [WorkspaceEntry(path: "todo.txt", kind: .file(Data("one\n".utf8)))])
        let changed = try WorkspaceTree(entries: [
            WorkspaceEntry(path: "todo.txt", kind: .file(Data("one\n".utf8))),
            WorkspaceEntry(path: "evil\u{9B}2J\u{202E}txt.sh", kind: .file(Data("x\n".utf8))),
        ])
        let patch = WorkspacePatch.make(base: base, result: changed)

        let rejecting = try Provider.keys()
        let working = try Provider.keys()
        try await MarketConnection.with(url: flow.url, keys: rejecting) { first in
            try await MarketConnection.with(url: flow.url, keys: working) { second in
                let (rejecter, worker) = (Provider(connection: first), Provider(connection: second))
                try await rejecter.advertise()
                let submit = try Daemon(
                    arguments: ["submit", "--prompt", "p", "--max-price", "2", "--dir", dir.path, "--wait"],
                    home: requester, log: flow.directory.file("submit.log"))
                // The first provider gives it back with a reason meant for the terminal.
                let (taskId, document) = try await rejecter.nextTask()
                try await rejecter.send(.jobRejected, ReasonBody(taskId: taskId, reason: "busy " + Self.hostile))
                try await submit.waitFor("gave the job back", timeout: 30)
                try await worker.advertise()
                let (again, requesterDocument) = try await worker.nextTask()
                #expect(again == taskId && requesterDocument.peerId == document.peerId)
                try await worker.send(.jobApproved, TaskRefBody(taskId: taskId))
                let info = try await worker.sendBlob(patch.data, as: .patch, taskId: taskId, to: requesterDocument)
                try await worker.finish(
                    taskId, requester: requesterDocument,
                    items: [
                        JobContent.Item(kind: .known(.line), stream: .known(.stdout), text: "line " + Self.hostile),
                        JobContent.Item(kind: .known(.tool), text: "Bash\n" + Self.hostile),
                    ],
                    result: [
                        "output": "output " + Self.hostile,
                        "patch": try Self.patchObject(info, files: patch.files),
                    ])
                #expect(try await submit.wait(timeout: 60) == 0, "\(submit.output)")
                let log = submit.output
                #expect(!Self.raw(log), "\(log)")
                #expect(log.contains("busy " + Self.shown), "\(log)")
                #expect(log.contains("line " + Self.shown), "\(log)")
                #expect(log.contains("[tool: Bash\\u{0A}" + Self.shown + "]"), "\(log)")
                #expect(log.contains("evil\\u{9B}2J\\u{202E}txt.sh"), "\(log)")
                #expect(log.contains("left\\u{202E}gnp.sh"), "\(log)")

                // `result` shows the output again, escaped; `--json` keeps the exact text.
                let shown = try await flow.cli(requester, ["result", "--task-id", taskId])
                #expect(!Self.raw(shown.stdout + shown.stderr))
                #expect(shown.stdout.contains("output " + Self.shown), "\(shown.stdout)")
                let json = try await flow.cli(requester, ["result", "--task-id", taskId, "--json"]).jsonObject()
                let result = try #require(json["result"] as? [String: Any])
                #expect(result["output"] as? String == "output " + Self.hostile)
            }
        }
    }

    @Test func aPatchThatDoesNotParseIsDisputedAndResultSaysWhyAtOnce() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let requester = try await flow.requester("ugo")
        let dir = try Self.project(flow, "ugo-project")
        try await MarketConnection.with(url: flow.url, keys: try Provider.keys()) { connection in
            let provider = Provider(connection: connection)
            try await provider.advertise()
            let submit = try Daemon(
                arguments: ["submit", "--prompt", "p", "--max-price", "2", "--dir", dir.path, "--wait"],
                home: requester, log: flow.directory.file("submit.log"))
            let (taskId, document) = try await provider.nextTask()
            try await provider.send(.jobApproved, TaskRefBody(taskId: taskId))
            let bogus = Data("# claude-max-market workspace patch; base sha256:00\nbogus line\n".utf8)
            let info = try await provider.sendBlob(bogus, as: .patch, taskId: taskId, to: document)
            try await provider.finish(taskId, requester: document, result: ["patch": try Self.patchObject(info)])
            #expect(try await submit.wait(timeout: 60) == 1, "\(submit.output)")
            #expect(submit.output.contains("REFUSED the result"), "\(submit.output)")
            #expect(submit.output.contains("the patch does not check out"), "\(submit.output)")
            #expect(try await flow.tasks(state: "disputed").count == 1)

            // Nothing more will come for it: `result` says so instead of following the task.
            let shown = try await flow.cli(requester, ["result", "--task-id", taskId])
            #expect(shown.stderr.contains("the patch was refused when it arrived"), "\(shown.stderr)")
            let apply = try await flow.cli(requester, ["result", "--task-id", taskId, "--apply"], expect: 1)
            #expect(apply.stderr.contains("its patch was refused when it arrived"), "\(apply.stderr)")
        }
    }

    @Test func aTranscriptThatIsRefusedIsSaidAtOnceByResult() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let requester = try await flow.requester("vic")
        try await MarketConnection.with(url: flow.url, keys: try Provider.keys()) { connection in
            let provider = Provider(connection: connection)
            try await provider.advertise()
            let submit = try Daemon(
                arguments: ["submit", "--prompt", "p", "--max-price", "2", "--wait"], home: requester,
                log: flow.directory.file("submit.log"))
            let (taskId, document) = try await provider.nextTask()
            try await provider.send(.jobApproved, TaskRefBody(taskId: taskId))
            let info = try await provider.sendBlob(
                Data("not a transcript\n".utf8), as: .transcript, taskId: taskId, to: document)
            try await provider.finish(
                taskId, requester: document,
                result: ["output": "done", "transcript": ["sessionId": "s1", "blob": Self.blobObject(info)]])
            // The job succeeded; only its conversation is lost, and that is said.
            #expect(try await submit.wait(timeout: 60) == 0, "\(submit.output)")
            #expect(submit.output.contains("the transcript was not kept"), "\(submit.output)")

            let shown = try await flow.cli(requester, ["result", "--task-id", taskId, "--wait-timeout", "10m"])
            #expect(shown.stdout.contains("done"))
            #expect(shown.stderr.contains("the transcript was refused when it arrived"), "\(shown.stderr)")
            let transcript = try await flow.cli(requester, ["result", "--task-id", taskId, "--transcript"], expect: 2)
            #expect(transcript.stderr.contains("it was refused when it arrived"), "\(transcript.stderr)")
        }
    }
}
