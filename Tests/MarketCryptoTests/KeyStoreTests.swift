import Foundation
import MarketCore
import MarketCrypto
import TestSupport
import Testing

@Suite struct KeyStoreTests {
    let directory = TemporaryDirectory()
    var store: KeyStore { KeyStore(directory: directory.url.appending(path: "keys")) }
    let start = Date.utc("2026-11-25T10:00:00Z")
    let day: TimeInterval = 86_400

    @Test func createsPrivateFilesOnFirstUse() throws {
        let (ring, events) = try store.loadOrCreate(now: start, rotationDays: 30)
        #expect(events == [.identityCreated(peerID: ring.peerID.rawValue)])
        #expect(ring.peerID == PeerID(signingKey: ring.identity.publicKey))
        #expect(FilePermissions.mode(store.directory.path) == 0o700)
        for name in ["identity.json", "sealing.json"] {
            #expect(FilePermissions.mode(store.directory.appending(path: name).path) == 0o600, "\(name)")
        }
        #expect(store.exposedFiles().isEmpty)
        let (again, none) = try store.loadOrCreate(now: start, rotationDays: 30)
        #expect(none.isEmpty)
        #expect(again.peerID == ring.peerID)
        chmod(store.directory.appending(path: "sealing.json").path, 0o644)
        #expect(store.exposedFiles().count == 1)
    }

    /// A crash between the two key files: with only the sealing key written, the next start makes
    /// both again; with only the identity written (an older version's order), the home still
    /// loads, with a new sealing key, and says so.
    @Test func aCrashBetweenTheTwoKeyFilesLeavesAHomeThatLoads() throws {
        let (first, _) = try store.loadOrCreate(now: start, rotationDays: 30)
        let identity = store.directory.appending(path: "identity.json")
        let sealing = store.directory.appending(path: "sealing.json")
        try FileManager.default.removeItem(at: identity)
        let (remade, events) = try store.loadOrCreate(now: start, rotationDays: 30)
        #expect(events == [.identityCreated(peerID: remade.peerID.rawValue)])
        #expect(remade.peerID != first.peerID)
        try FileManager.default.removeItem(at: sealing)
        let (recovered, recovery) = try store.loadOrCreate(now: start, rotationDays: 30)
        #expect(recovery == [.sealingRecovered])
        #expect(recovered.peerID == remade.peerID, "the identity is kept")
        #expect(FileManager.default.fileExists(atPath: sealing.path))
        let (again, none) = try store.loadOrCreate(now: start, rotationDays: 30)
        #expect(none.isEmpty && again.peerID == remade.peerID)
    }

    @Test func rotationKeepsOldCiphertextOpenUntilTheGracePeriodEnds() throws {
        let (ring, _) = try store.loadOrCreate(now: start, rotationDays: 30)
        let sealed = try Sealer.seal(Data("old secret".utf8), to: ring.current.publicKeys, purpose: .payload)
        let xwingSealed = try Sealer.seal(
            Data("old pq".utf8), to: ring.current.publicKeys, suite: .hpkeXWing, purpose: .payload)

        let rotated = try store.rotateSealing(now: start.addingTimeInterval(day), rotationDays: 30)
        #expect(rotated.generations.count == 2)
        #expect(rotated.current.publicKeys != ring.current.publicKeys)
        #expect(try Sealer.open(sealed, keys: rotated).0 == Data("old secret".utf8))
        #expect(try Sealer.open(xwingSealed, keys: rotated).0 == Data("old pq".utf8))

        let late = try #require(try store.load(now: start.addingTimeInterval(32 * day), rotationDays: 30))
        #expect {
            _ = try Sealer.open(sealed, keys: late)
        } throws: { error in
            (error as? SealError)?.code == .keyRetired && "\(error)".contains("key retired")
        }
        #expect(
            try store.removeExpired(now: start.addingTimeInterval(32 * day), rotationDays: 30, dryRun: true).count == 1)
        #expect(try store.load(now: start, rotationDays: 30)!.generations.count == 2)
        #expect(
            try store.removeExpired(now: start.addingTimeInterval(32 * day), rotationDays: 30, dryRun: false).count == 1
        )
        let cleaned = try #require(try store.load(now: start.addingTimeInterval(32 * day), rotationDays: 30))
        #expect(cleaned.generations.count == 1)
        #expect(!(try String(contentsOf: store.directory.appending(path: "sealing.json"), encoding: .utf8)).isEmpty)
        #expect { _ = try Sealer.open(sealed, keys: cleaned) } throws: { ($0 as? SealError)?.code == .keyRetired }
        // New ciphertext still opens.
        let fresh = try Sealer.seal(Data("new".utf8), to: cleaned.current.publicKeys, purpose: .payload)
        #expect(try Sealer.open(fresh, keys: cleaned).0 == Data("new".utf8))
    }

    @Test func rotatesByItselfWhenTheSealingKeyIsTooOld() throws {
        let (ring, _) = try store.loadOrCreate(now: start, rotationDays: 30)
        let (same, none) = try store.loadOrCreate(now: start.addingTimeInterval(29 * day), rotationDays: 30)
        #expect(none.isEmpty && same.current.created == ring.current.created)
        let (rotated, events) = try store.loadOrCreate(now: start.addingTimeInterval(31 * day), rotationDays: 30)
        #expect(events == [.sealingRotated(automatic: true, previousCreated: ring.current.created)])
        #expect(rotated.generations.count == 2)
        #expect(rotated.peerID == ring.peerID)
    }

    @Test func identityRotationIsSignedByTheOldKey() throws {
        let (ring, _) = try store.loadOrCreate(now: start, rotationDays: 30)
        let (rotated, statement) = try store.rotateIdentity(now: start.addingTimeInterval(day), rotationDays: 30)
        #expect(rotated.peerID != ring.peerID)
        #expect(statement.oldPeerID == ring.peerID.rawValue && statement.newPeerID == rotated.peerID.rawValue)
        #expect(statement.verify())
        var forged = statement
        forged.newPublicKey = ring.identity.publicKey.rawRepresentation.base64EncodedString()
        #expect(!forged.verify())
        #expect(rotated.identityHistory == [statement])
        // Sealing keys are untouched by an identity rotation.
        #expect(rotated.current.publicKeys == ring.current.publicKeys)
    }

    @Test func publicKeyDocumentsAreSignedAndChecked() throws {
        let (ring, _) = try store.loadOrCreate(now: start, rotationDays: 30)
        let data = try PublicKeyDocument(ring: ring).encoded()
        let document = try PublicKeyDocument.verified(from: data)
        #expect(document.peerId == ring.peerID.rawValue)
        #expect(try document.publicKeys() == ring.current.publicKeys)
        let text = String(decoding: data, as: UTF8.self)
        let xKey = ring.current.publicKeys.x25519.base64EncodedString()
        let (other, _) = try KeyStore(directory: directory.file("other")).loadOrCreate(now: start, rotationDays: 30)
        let swapped = text.replacingOccurrences(of: xKey, with: other.current.publicKeys.x25519.base64EncodedString())
        #expect(throws: KeyStoreError.self) { _ = try PublicKeyDocument.verified(from: Data(swapped.utf8)) }
        #expect(!text.contains(ring.current.x25519.rawRepresentation.base64EncodedString()))
    }
}

extension FilePermissions {
    static func mode(_ path: String) -> Int? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Int(info.st_mode & 0o777)
    }
}

enum FilePermissions {}
