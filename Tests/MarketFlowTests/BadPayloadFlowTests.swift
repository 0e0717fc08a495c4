import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketProtocol
import Participant
import TestSupport
import Testing

/// A requester's workspace that does not parse is its own fault: the real `provide` daemon
/// rejects the job with the reason, its reputation untouched, and a task whose inputs stopped
/// the daemon while it read them is refused after the restart instead of read again.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct BadPayloadFlowTests {
    init() async throws { try await Flow.ensureImage() }

    /// One file in a ustar archive whose header checksum is wrong.
    static func tarWithABadChecksum() -> Data {
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, at offset: Int) {
            header.replaceSubrange(offset..<offset + text.utf8.count, with: text.utf8)
        }
        put("a.txt", at: 0)
        put("0000644", at: 100)
        put("0000000", at: 108)
        put("0000000", at: 116)
        put("00000000004", at: 124)
        put("00000000000", at: 136)
        put("0000001", at: 148)  // the checksum: no header sums to 1
        put("0", at: 156)
        put("ustar", at: 257)
        put("00", at: 263)
        var archive = Data(header)
        archive += Data("abc\n".utf8) + Data(count: 508)
        archive += Data(count: 1024)
        return archive
    }

    /// A PAX record whose length is 2^63-1: the archive that crashed every provider in a loop
    /// (issue #32), its headers otherwise well formed.
    static func tarWithAnOverflowingPAXRecord() -> Data {
        func block(_ name: String, type: String, body: Data) -> Data {
            var header = [UInt8](repeating: 0, count: 512)
            func put(_ text: String, at offset: Int) {
                header.replaceSubrange(offset..<offset + text.utf8.count, with: text.utf8)
            }
            put(name, at: 0)
            put("0000644", at: 100)
            put(
                String(repeating: "0", count: 11 - String(body.count, radix: 8).count) + String(body.count, radix: 8),
                at: 124)
            put(type, at: 156)
            put("ustar", at: 257)
            put("00", at: 263)
            put("        ", at: 148)
            let sum = header.reduce(0) { $0 + Int($1) }
            put(String(repeating: "0", count: 6 - String(sum, radix: 8).count) + String(sum, radix: 8), at: 148)
            header[154] = 0
            return Data(header) + body + Data(count: (512 - body.count % 512) % 512)
        }
        return block("pax", type: "x", body: Data("9223372036854775807 path=x\n".utf8))
            + block("x", type: "0", body: Data()) + Data(count: 1024)
    }

    /// A requester played by hand: minted credits, and a workspace task posted for `archive`.
    static func post(_ archive: Data, flow: Flow, requester: KeyRing, connection: MarketConnection) async throws
        -> String
    {
        let taskId = "badtar-" + UUID().uuidString.prefix(8).lowercased()
        try await connection.request(
            .taskPost,
            PostBody(
                taskId: taskId, maxPrice: 3_000_000, workspace: (bytes: 4, files: 1, archiveBytes: Int64(archive.count))
            )
        ).throwIfError()
        return taskId
    }

    /// The payload and the workspace's pieces, sealed to the provider that was assigned.
    static func deliver(_ archive: Data, taskId: String, connection: MarketConnection) async throws {
        let assigned = try await connection.next(.taskAssigned, taskId: taskId, timeout: .seconds(30))
            .decodeBody(AssignedBody.self)
        let provider = try PublicKeyDocument.verified(from: Data(assigned.providerKeyDocument.utf8))
        let (info, chunks) = try SealedBlob.seal(archive, to: provider, purpose: .payload)
        for (index, chunk) in chunks.enumerated() {
            try await connection.request(
                .blobChunk,
                BlobChunkBody(taskId: taskId, blob: .workspace, index: index, count: chunks.count, sealed: chunk)
            ).throwIfError()
        }
        let payload = JobContent.Payload(
            taskId: taskId, prompt: Data("hi".utf8),
            workspace: JobContent.WorkspaceInfo(blob: info, files: 1, bytes: 4, leftOut: []))
        let (sealed, _) = try JobContent.seal(payload, to: provider, purpose: .payload)
        try await connection.request(.payloadDeliver, SealedBody(taskId: taskId, sealed: sealed)).throwIfError()
    }

    static func requester(_ flow: Flow) async throws -> KeyRing {
        let keys = KeyRing.inMemory(sealing: try SealingKeySet.generate(at: Date()))
        try await flow.cli(
            flow.home("operator"), ["market", "mint", "--db", flow.db, "--to", keys.peerID.rawValue, "--amount", "5"])
        return keys
    }

    @Test(arguments: ["a bad checksum", "an overflowing PAX record"])
    func aWorkspaceThatDoesNotParseIsRejectedWithoutAFaultOfTheProvider(_ kind: String) async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let home = try await flow.provider("pia")
        let daemon = try await flow.provide(home, command: ["cat"])
        let provider = try await flow.peerID(home)
        let keys = try await Self.requester(flow)
        let archive = kind == "a bad checksum" ? Self.tarWithABadChecksum() : Self.tarWithAnOverflowingPAXRecord()
        try await MarketConnection.with(url: flow.url, keys: keys) { connection in
            let taskId = try await Self.post(archive, flow: flow, requester: keys, connection: connection)
            try await Self.deliver(archive, taskId: taskId, connection: connection)
            let rejected = try await connection.next(.jobRejected, taskId: taskId, timeout: .seconds(30))
            #expect(rejected.body.contains("the workspace was refused"), "\(rejected.body)")
        }
        #expect(daemon.process.isRunning, "\(daemon.output)")
        let peer = try #require(try await flow.get("/v1/peers/\(provider)") as? [String: Any])
        let reputation = try #require(peer["reputation"] as? [String: Any])
        #expect(reputation["samples"] as? Int == 0, "\(peer)")
    }

    @Test func inputsThatStoppedTheDaemonAreRefusedAfterItsRestart() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let home = try await flow.provider("quinn")
        let keys = try await Self.requester(flow)
        let archive = Self.tarWithABadChecksum()
        try await MarketConnection.with(url: flow.url, keys: keys) { connection in
            // The offer stands, the daemon is not running: the task is assigned and its inputs wait
            // at the market, as they do for a daemon that stopped while reading them.
            let taskId = try await Self.post(archive, flow: flow, requester: keys, connection: connection)
            try await Self.deliver(archive, taskId: taskId, connection: connection)
            // What such a stop leaves in the provider's home.
            let environment = CLIRunner.baseEnvironment(home: home)
            let database = try StateDatabase(paths: ParticipantPaths(environment: environment))
            let store = MarketTaskStore(database: database)
            try store.insert(
                LocalMarketTask(
                    taskId: taskId, role: "provider", state: .readingInputs, counterparty: keys.peerID.rawValue,
                    maxPrice: 3_000_000, price: 1_000_000, createdMs: 0, updatedMs: 0), prompt: nil)
            let daemon = try await flow.provide(home, command: ["cat"])
            let rejected = try await connection.next(.jobRejected, taskId: taskId, timeout: .seconds(30))
            #expect(rejected.body.contains("stopped while it read"), "\(rejected.body)")
            try await daemon.waitFor("rejected task \(taskId)", timeout: 30)
            // The mark is gone: the task is the market's again (re-opened for another provider).
            #expect(try store.task(taskId)?.state != .readingInputs)
        }
    }
}
