import Crypto
import Foundation
import MarketCrypto
import TestSupport
import Testing

/// Keys for one recipient, as a lookup the opener can use.
struct SingleKey: SealingKeyLookup {
    let keySet: SealingKeySet

    func keySet(forKeyID keyID: Data, suite: SealSuite) throws(SealError) -> SealingKeySet {
        guard SealSuite.keyID(suite: suite, publicKey: keySet.publicKeys.key(for: suite)) == keyID else {
            throw SealError(.wrongKey, "wrong key")
        }
        return keySet
    }
}

/// One key set per test process: RSA-2048 generation is the slow part.
let sharedKeys = try! SealingKeySet.generate(at: Date())
let otherKeys = try! SealingKeySet.generate(at: Date())

func seal(_ plaintext: Data, suite: SealSuite, exponent: UInt8 = 10, keys: SealingKeySet = sharedKeys) throws -> Data {
    var source = DataSource(plaintext)
    var sink = DataSink()
    try Sealer.seal(
        from: &source, to: &sink, recipient: keys.publicKeys, suite: suite, purpose: .file, chunkExponent: exponent)
    return sink.data
}

func open(_ sealed: Data, keys: SealingKeySet = sharedKeys) throws -> Data {
    try Sealer.open(sealed, keys: SingleKey(keySet: keys)).0
}

func randomData(_ count: Int) -> Data {
    var generator = SystemRandomNumberGenerator()
    var data = Data(count: count)
    data.withUnsafeMutableBytes { buffer in
        var offset = 0
        while offset < count {
            var word = generator.next()
            let n = min(8, count - offset)
            withUnsafeBytes(of: &word) {
                buffer.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: n)
            }
            offset += n
        }
    }
    return data
}

func headerLength(_ sealed: Data) -> Int {
    18 + Int(sealed[sealed.startIndex + 16]) << 8 + Int(sealed[sealed.startIndex + 17])
}

func expectSealError(_ code: SealError.Code, _ comment: Comment? = nil, _ body: () throws -> Void) {
    #expect(comment) {
        try body()
    } throws: { error in
        (error as? SealError)?.code == code
    }
}

@Suite struct SealerRoundTripTests {
    @Test(arguments: SealSuite.allCases)
    func roundTripsAtChunkBoundaries(suite: SealSuite) throws {
        for size in [0, 1, 1023, 1024, 1025, 4096, 5000] {
            let plaintext = randomData(size)
            let sealed = try seal(plaintext, suite: suite)
            #expect(sameBytes(try open(sealed), plaintext), "\(suite.name) \(size) bytes")
            let chunks = max(1, (size + 1023) / 1024)
            #expect(sealed.count == headerLength(sealed) + size + 16 * chunks)
        }
    }

    @Test(arguments: SealSuite.allCases)
    func roundTrips64MiB(suite: SealSuite) throws {
        let plaintext = randomData(64 << 20)
        let sealed = try seal(plaintext, suite: suite, exponent: 16)
        let (opened, info) = try Sealer.open(sealed, keys: SingleKey(keySet: sharedKeys))
        #expect(sameBytes(opened, plaintext))
        #expect(info.chunks == 1024 && info.suite == suite && info.purpose == .file)
    }

    @Test func theWrongRecipientGetsAWrongKeyError() throws {
        let sealed = try seal(Data("hello".utf8), suite: .hpkeX25519)
        expectSealError(.wrongKey) { _ = try open(sealed, keys: otherKeys) }
    }

    @Test func inputThatIsNotSealedIsNamed() throws {
        expectSealError(.notSealed) { _ = try open(Data("plain text".utf8)) }
        var sealed = try seal(Data("x".utf8), suite: .hpkeX25519)
        sealed[sealed.startIndex + 4] = 9
        expectSealError(.unsupportedVersion) { _ = try open(sealed) }
        sealed[sealed.startIndex + 4] = 1
        sealed[sealed.startIndex + 5] = 77
        expectSealError(.unknownSuite) { _ = try open(sealed) }
    }

    @Test func armorRoundTripsAndRejectsGarbage() throws {
        let plaintext = randomData(10_000)
        let sealed = try seal(plaintext, suite: .hpkeX25519)
        var writer = ArmorWriter(sink: DataSink())
        try writer.write(sealed.prefix(7))
        try writer.write(sealed.dropFirst(7))
        try writer.finish()
        let armored = writer.sink.data
        #expect(String(decoding: armored, as: UTF8.self).hasPrefix(Armor.begin))
        func openArmored(_ data: Data) throws -> Data {
            var raw = DataSource(data)
            let (prefix, isArmored) = try Armor.detect(&raw)
            #expect(isArmored)
            var source = try ArmorReader(source: raw, prefix: prefix)
            var sink = DataSink()
            try Sealer.open(from: &source, to: &sink, keys: SingleKey(keySet: sharedKeys))
            return sink.data
        }
        #expect(sameBytes(try openArmored(armored), plaintext))
        expectSealError(.trailingData) { _ = try openArmored(armored + Data("junk\n".utf8)) }
        expectSealError(.truncated) { _ = try openArmored(armored.prefix(armored.count - 60)) }
    }
}

@Suite struct SealerTamperTests {
    let plaintext = randomData(3 * 1024 + 100)

    @Test(arguments: SealSuite.allCases)
    func flippingAnyHeaderByteIsDetected(suite: SealSuite) throws {
        let sealed = try seal(plaintext, suite: suite)
        for index in 0..<headerLength(sealed) {
            var tampered = sealed
            tampered[tampered.startIndex + index] ^= 0x01
            #expect(throws: (any Error).self, "\(suite.name) header byte \(index)") { _ = try open(tampered) }
        }
    }

    @Test(arguments: SealSuite.allCases)
    func chunkTamperingIsDetected(suite: SealSuite) throws {
        let sealed = try seal(plaintext, suite: suite)
        let header = headerLength(sealed)
        let chunk = 1024 + 16
        let body = sealed.dropFirst(header)
        var chunks = stride(from: body.startIndex, to: body.endIndex, by: chunk).map {
            Data(body[$0..<min($0 + chunk, body.endIndex)])
        }
        #expect(chunks.count == 4)
        let head = Data(sealed.prefix(header))
        func assemble(_ parts: [Data]) -> Data { parts.reduce(head, +) }

        var flipped = sealed
        flipped[flipped.startIndex + header + 1500] ^= 0x80
        expectSealError(.tampered, "ciphertext byte") { _ = try open(flipped) }
        expectSealError(.tampered, "dropped chunk") { _ = try open(assemble([chunks[0], chunks[2], chunks[3]])) }
        expectSealError(.tampered, "duplicated chunk") {
            _ = try open(assemble([chunks[0], chunks[1], chunks[1], chunks[2], chunks[3]]))
        }
        expectSealError(.tampered, "swapped chunks") {
            _ = try open(assemble([chunks[1], chunks[0], chunks[2], chunks[3]]))
        }
        expectSealError(.truncated, "cut at a chunk boundary") { _ = try open(assemble(Array(chunks.prefix(2)))) }
        expectSealError(.truncated, "cut inside a chunk") { _ = try open(sealed.prefix(sealed.count - 50)) }
        expectSealError(.truncated, "header only") { _ = try open(head) }
        expectSealError(.truncated, "cut inside the header") { _ = try open(sealed.prefix(10)) }
        // After a partial last chunk, appended bytes shift the chunk grid: refused as altered.
        #expect(throws: SealError.self, "trailing garbage") { _ = try open(sealed + Data("garbage".utf8)) }
        #expect(throws: SealError.self, "a full extra chunk") { _ = try open(sealed + chunks[0]) }
        // After a full last chunk the grid holds, and the extra data is named as such.
        let aligned = try seal(randomData(2048), suite: suite)
        expectSealError(.trailingData, "trailing garbage after a full chunk") {
            _ = try open(aligned + Data("junk".utf8))
        }

        // A chunk from another file sealed to the same key at the same position.
        let other = try seal(randomData(plaintext.count), suite: suite)
        let otherChunk = Data(other.dropFirst(headerLength(other)).prefix(chunk))
        chunks[0] = otherChunk
        expectSealError(.tampered, "chunk from another file") { _ = try open(assemble(chunks)) }
    }
}

@Suite struct InteropTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appending(path: "Interop/hpke_interop.py")

    func python(_ arguments: [String]) throws -> CLIResult {
        try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"), ["python3", Self.script.path] + arguments,
            environment: ProcessInfo.processInfo.environment)
    }

    @Test(arguments: [0, 1, 1023, 1024, 1025, 70_000])
    func pythonOpensWhatWeSealAndWeOpenWhatPythonSeals(size: Int) throws {
        let directory = TemporaryDirectory()
        let plaintext = randomData(size)
        let sealedPath = directory.file("ours.sealed")
        try seal(plaintext, suite: .hpkeX25519).write(to: sealedPath)
        let privateKey = sharedKeys.x25519.rawRepresentation.base64EncodedString()
        let decrypted = try python(["decrypt", privateKey, sealedPath.path, directory.file("theirs.out").path])
        #expect(decrypted.exitCode == 0, "\(decrypted.stderr)")
        #expect(sameBytes(try Data(contentsOf: directory.file("theirs.out")), plaintext))

        try plaintext.write(to: directory.file("plain"))
        let publicKey = sharedKeys.x25519.publicKey.rawRepresentation.base64EncodedString()
        let encrypted = try python([
            "encrypt", publicKey, directory.file("plain").path, directory.file("theirs.sealed").path, "10",
        ])
        #expect(encrypted.exitCode == 0, "\(encrypted.stderr)")
        #expect(sameBytes(try open(try Data(contentsOf: directory.file("theirs.sealed"))), plaintext))
    }
}
