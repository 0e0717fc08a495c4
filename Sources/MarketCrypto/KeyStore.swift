import Crypto
import Foundation
import MarketCore
import _CryptoExtras

/// A participant's keys as loaded: the identity, every sealing key generation (current first),
/// and what is needed to refuse retired keys after their grace period.
public struct KeyRing: Sendable, SealingKeyLookup {
    public let identity: PeerIdentity
    /// Newest first; `generations[0]` is the current sealing key set.
    public let generations: [SealingKeySet]
    /// Key ids of generations whose private keys were removed, with when they were retired.
    public let removed: [RemovedKeySet]
    public let identityHistory: [IdentityRotation]
    /// How long a retired key still opens old ciphertext.
    public let grace: TimeInterval
    public let now: Date

    public var current: SealingKeySet { generations[0] }
    public var peerID: PeerID { identity.peerID }

    public init(
        identity: PeerIdentity, generations: [SealingKeySet], removed: [RemovedKeySet] = [],
        identityHistory: [IdentityRotation] = [], grace: TimeInterval, now: Date
    ) {
        precondition(!generations.isEmpty, "a key ring needs a current sealing key set")
        self.identity = identity
        self.generations = generations
        self.removed = removed
        self.identityHistory = identityHistory
        self.grace = grace
        self.now = now
    }

    /// A key ring held only in memory (tests, benchmarks, simulated peers): a new identity with
    /// the given sealing keys.
    public static func inMemory(sealing: SealingKeySet, now: Date = Date()) -> KeyRing {
        KeyRing(
            identity: PeerIdentity(signingKey: Curve25519.Signing.PrivateKey(), created: now), generations: [sealing],
            grace: 30 * 86_400, now: now)
    }

    public func keySet(forKeyID keyID: Data, suite: SealSuite) throws(SealError) -> SealingKeySet {
        for generation in generations
        where SealSuite.keyID(suite: suite, publicKey: generation.publicKeys.key(for: suite)) == keyID {
            if let retired = generation.retired, now > retired.addingTimeInterval(grace) {
                throw SealError(
                    .keyRetired,
                    "key retired: this was sealed to a \(suite.name) key retired on \(retired.ISO8601Format()); "
                        + "its \(Int(grace / 86_400))-day grace period is over, so it no longer opens anything")
            }
            return generation
        }
        if let tombstone = removed.first(where: { $0.keyIDs[suite.name] == keyID.hexString }) {
            throw SealError(
                .keyRetired,
                "key retired: this was sealed to a \(suite.name) key retired on \(tombstone.retired.ISO8601Format()) "
                    + "and removed after its grace period")
        }
        throw SealError(
            .wrongKey,
            "wrong key: this was sealed to \(suite.name) key \(keyID.hexString), which is not one of this identity's keys"
        )
    }
}

/// What is left of a removed sealing generation: enough to say "retired", nothing secret.
public struct RemovedKeySet: Sendable, Codable, Equatable {
    public var retired: Date
    public var removed: Date
    public var keyIDs: [String: String]
}

/// A signed statement that an identity key was replaced: the old key signs the new one.
public struct IdentityRotation: Sendable, Codable, Equatable {
    public var oldPeerID: String
    public var oldPublicKey: String
    public var newPeerID: String
    public var newPublicKey: String
    public var at: Date
    /// Ed25519 by the old key over `statementBytes`.
    public var signature: String

    public var statementBytes: [UInt8] {
        CanonicalBytes.lengthPrefixed(
            domain: "claude-max-market/identity-rotation/v1\u{0}",
            fields: [oldPeerID, oldPublicKey, newPeerID, newPublicKey, String(Int64(at.timeIntervalSince1970 * 1000))])
    }

    public func verify() -> Bool {
        guard let keyData = Data(base64Encoded: oldPublicKey), let signatureData = Data(base64Encoded: signature),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: keyData)
        else { return false }
        return PeerID(signingKey: key).rawValue == oldPeerID && key.isValidSignature(signatureData, for: statementBytes)
    }
}

/// Something the key store did by itself or on request; the caller writes it to the audit log.
public enum KeyEvent: Sendable, Equatable {
    case identityCreated(peerID: String)
    case sealingRotated(automatic: Bool, previousCreated: Date)
    case identityRotated(oldPeerID: String, newPeerID: String)
    case retiredRemoved(count: Int)
    /// The identity was there but its sealing key was missing: a new one was made.
    case sealingRecovered
}

public struct KeyStoreError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// Key files under `keys/` (directory 0700, files 0600, written atomically, guarded by a lock
/// file so that two processes never create or rotate at once).
public struct KeyStore: Sendable {
    public let directory: URL

    public init(directory: URL) {
        self.directory = directory
    }

    var identityFile: URL { directory.appending(path: "identity.json") }
    var sealingFile: URL { directory.appending(path: "sealing.json") }
    var lockFile: URL { directory.appending(path: ".lock") }

    public var exists: Bool { FileManager.default.fileExists(atPath: identityFile.path) }

    /// Loads the keys, creating them on first use and rotating the sealing key when it is older
    /// than `rotationDays`.
    public func loadOrCreate(now: Date, rotationDays: Int) throws -> (KeyRing, [KeyEvent]) {
        try withLock {
            var events: [KeyEvent] = []
            if !exists {
                // The sealing key first: the identity file is what marks the keys as made, so a
                // crash between the two writes leaves a home that simply makes them again.
                let identity = PeerIdentity(signingKey: Curve25519.Signing.PrivateKey(), created: now)
                try writeSealing(SealingFile(generations: [try SealingKeySet.generate(at: now)], removed: []))
                try writeIdentity(IdentityFile(identity: identity, history: []))
                events.append(.identityCreated(peerID: identity.peerID.rawValue))
            } else if !FileManager.default.fileExists(atPath: sealingFile.path) {
                // An identity without its sealing key (a crash of an older version between the
                // two writes): payloads sealed to the lost key cannot be opened, but the home loads.
                try writeSealing(SealingFile(generations: [try SealingKeySet.generate(at: now)], removed: []))
                events.append(.sealingRecovered)
            }
            var sealing = try readSealing()
            let current = sealing.generations[0]
            if now.timeIntervalSince(current.created) > Double(rotationDays) * 86_400 {
                try rotate(&sealing, now: now)
                events.append(.sealingRotated(automatic: true, previousCreated: current.created))
            }
            return (try ring(now: now, rotationDays: rotationDays), events)
        }
    }

    /// The identity's signing key, read without the lock; nil when there is no identity yet.
    /// The audit log signs its head with it.
    public func identityKey() throws -> PeerIdentity? {
        guard exists else { return nil }
        return try readIdentity().identity
    }

    /// Loads without creating; nil when there is no identity yet.
    public func load(now: Date, rotationDays: Int) throws -> KeyRing? {
        guard exists else { return nil }
        return try ring(now: now, rotationDays: rotationDays)
    }

    /// A new sealing key set; the old one is retired and kept for the grace period.
    public func rotateSealing(now: Date, rotationDays: Int) throws -> KeyRing {
        try withLock {
            var sealing = try readSealing()
            try rotate(&sealing, now: now)
            return try ring(now: now, rotationDays: rotationDays)
        }
    }

    /// A new identity key, signed over by the old one. The peer id changes.
    public func rotateIdentity(now: Date, rotationDays: Int) throws -> (KeyRing, IdentityRotation) {
        try withLock {
            let file = try readIdentity()
            let old = try file.identity
            let new = PeerIdentity(signingKey: Curve25519.Signing.PrivateKey(), created: now)
            var rotation = IdentityRotation(
                oldPeerID: old.peerID.rawValue, oldPublicKey: old.publicKey.rawRepresentation.base64EncodedString(),
                newPeerID: new.peerID.rawValue, newPublicKey: new.publicKey.rawRepresentation.base64EncodedString(),
                at: now, signature: "")
            rotation.signature = try old.sign(rotation.statementBytes).base64EncodedString()
            try writeIdentity(IdentityFile(identity: new, history: file.history + [rotation]))
            return (try ring(now: now, rotationDays: rotationDays), rotation)
        }
    }

    /// Removes the private keys of generations retired longer than the grace period, keeping a
    /// tombstone of their key ids. Returns what was (or, with `dryRun`, would be) removed.
    public func removeExpired(now: Date, rotationDays: Int, dryRun: Bool) throws -> [RemovedKeySet] {
        guard exists else { return [] }
        return try withLock {
            var sealing = try readSealing()
            let grace = Double(rotationDays) * 86_400
            var removed: [RemovedKeySet] = []
            sealing.generations.removeAll { generation in
                guard let retired = generation.retired, now > retired.addingTimeInterval(grace) else { return false }
                var ids: [String: String] = [:]
                for suite in SealSuite.allCases {
                    ids[suite.name] =
                        SealSuite.keyID(suite: suite, publicKey: generation.publicKeys.key(for: suite)).hexString
                }
                removed.append(RemovedKeySet(retired: retired, removed: now, keyIDs: ids))
                return true
            }
            if !dryRun && !removed.isEmpty {
                sealing.removed += removed
                try writeSealing(sealing)
            }
            return removed
        }
    }

    /// Key files whose mode lets anyone but the owner read them.
    public func exposedFiles() -> [String] {
        var paths = [directory.path]
        paths += ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).map {
            directory.appending(path: $0).path
        }
        return paths.filter { path in
            var info = stat()
            return stat(path, &info) == 0 && info.st_mode & 0o077 != 0
        }
    }

    // MARK: Files

    private func rotate(_ sealing: inout SealingFile, now: Date) throws {
        sealing.generations[0].retired = now
        sealing.generations.insert(try SealingKeySet.generate(at: now), at: 0)
        try writeSealing(sealing)
    }

    private func ring(now: Date, rotationDays: Int) throws -> KeyRing {
        let identity = try readIdentity()
        let sealing = try readSealing()
        return KeyRing(
            identity: try identity.identity, generations: sealing.generations, removed: sealing.removed,
            identityHistory: identity.history, grace: Double(rotationDays) * 86_400, now: now)
    }

    private func withLock<T>(_ body: () throws -> T) throws -> T {
        try FileManager.default.createDirectory(
            at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        chmod(directory.path, 0o700)
        let fd = open(lockFile.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw POSIXFileError(operation: "open", path: lockFile.path) }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw POSIXFileError(operation: "lock", path: lockFile.path) }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    struct IdentityFile: Codable {
        var format = "claude-max-market-identity"
        var version = 1
        var suite = "ed25519"
        var privateKey: String
        var created: Date
        var history: [IdentityRotation]

        init(identity: PeerIdentity, history: [IdentityRotation]) {
            privateKey = identity.signingKey.rawRepresentation.base64EncodedString()
            created = identity.created
            self.history = history
        }

        var identity: PeerIdentity {
            get throws {
                guard format == "claude-max-market-identity", version == 1, suite == "ed25519",
                    let raw = Data(base64Encoded: privateKey)
                else { throw KeyStoreError(description: "identity.json is not a version 1 ed25519 identity file") }
                return PeerIdentity(
                    signingKey: try Curve25519.Signing.PrivateKey(rawRepresentation: raw), created: created)
            }
        }
    }

    struct SealingFile: Codable {
        struct Generation: Codable {
            var created: Date
            var retired: Date?
            var x25519: String
            var xwingSeed: String
            var rsa: String
        }

        var format = "claude-max-market-sealing-keys"
        var version = 1
        var generations: [SealingKeySet]
        var removed: [RemovedKeySet]

        init(generations: [SealingKeySet], removed: [RemovedKeySet]) {
            self.generations = generations
            self.removed = removed
        }

        enum CodingKeys: String, CodingKey { case format, version, generations, removed }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            format = try container.decode(String.self, forKey: .format)
            version = try container.decode(Int.self, forKey: .version)
            guard format == "claude-max-market-sealing-keys", version == 1 else {
                throw KeyStoreError(description: "sealing.json is not a version 1 sealing key file")
            }
            removed = try container.decode([RemovedKeySet].self, forKey: .removed)
            generations = try container.decode([Generation].self, forKey: .generations).map { generation in
                guard let x = Data(base64Encoded: generation.x25519),
                    let seed = Data(base64Encoded: generation.xwingSeed),
                    let rsa = Data(base64Encoded: generation.rsa)
                else { throw KeyStoreError(description: "sealing.json holds a key that is not base64") }
                _ = try _RSA.Encryption.PrivateKey(derRepresentation: rsa)
                return SealingKeySet(
                    x25519: try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: x),
                    xwing: try XWingMLKEM768X25519.PrivateKey(seedRepresentation: seed, publicKey: nil),
                    rsaDER: rsa, created: generation.created, retired: generation.retired)
            }
            guard !generations.isEmpty else { throw KeyStoreError(description: "sealing.json holds no key") }
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(format, forKey: .format)
            try container.encode(version, forKey: .version)
            try container.encode(removed, forKey: .removed)
            try container.encode(
                generations.map {
                    Generation(
                        created: $0.created, retired: $0.retired,
                        x25519: $0.x25519.rawRepresentation.base64EncodedString(),
                        xwingSeed: $0.xwing.seedRepresentation.base64EncodedString(),
                        rsa: $0.rsaDER.base64EncodedString())
                }, forKey: .generations)
        }
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .millisecondsSince1970
        return encoder
    }()

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return decoder
    }()

    private func readIdentity() throws -> IdentityFile {
        try read(IdentityFile.self, from: identityFile)
    }

    private func readSealing() throws -> SealingFile {
        try read(SealingFile.self, from: sealingFile)
    }

    private func read<T: Decodable>(_ type: T.Type, from url: URL) throws -> T {
        do {
            return try Self.decoder.decode(type, from: Data(contentsOf: url))
        } catch let error as KeyStoreError {
            throw error
        } catch {
            throw KeyStoreError(description: "cannot read \(url.path): \(error)")
        }
    }

    private func writeIdentity(_ file: IdentityFile) throws {
        try AtomicFile.write(Self.encoder.encode(file), to: identityFile, permissions: 0o600)
    }

    private func writeSealing(_ file: SealingFile) throws {
        try AtomicFile.write(Self.encoder.encode(file), to: sealingFile, permissions: 0o600)
    }
}

extension Sequence<UInt8> {
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var output: [UInt8] = []
        for byte in self {
            output.append(digits[Int(byte >> 4)])
            output.append(digits[Int(byte & 0xf)])
        }
        return String(decoding: output, as: UTF8.self)
    }
}
