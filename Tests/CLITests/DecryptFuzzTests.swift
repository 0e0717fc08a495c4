import Foundation
import TestSupport
import Testing

/// Mutated sealed files and armor given to `decrypt`: each one exits non-zero with a message and
/// writes nothing — not a partial file, not a byte on stdout. Seeded, so a failure repeats.
@Suite struct DecryptFuzzTests {
    let home = TemporaryDirectory("cmm-fuzz")

    static func mutate(_ data: Data, _ random: inout SeededRandom) -> Data {
        var bytes = [UInt8](data)
        switch random.below(6) {
        case 0:  // flip one bit
            let index = random.below(bytes.count)
            bytes[index] ^= UInt8(1 << random.below(8))
        case 1:  // truncate
            bytes = Array(bytes.prefix(random.below(bytes.count)))
        case 2:  // append garbage
            bytes += (0..<(1 + random.below(64))).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        case 3:  // overwrite a run with random bytes
            let start = random.below(bytes.count)
            for index in start..<min(bytes.count, start + 1 + random.below(16)) {
                bytes[index] = UInt8(truncatingIfNeeded: random.next())
            }
        case 4:  // swap two regions (reordered chunks)
            let a = random.below(bytes.count / 2)
            let b = bytes.count / 2 + random.below(bytes.count / 2)
            let length = min(32, bytes.count - b)
            for offset in 0..<length { bytes.swapAt(a + offset, b + offset) }
        default:  // duplicate a region
            let start = random.below(bytes.count)
            let piece = bytes[start..<min(bytes.count, start + 1 + random.below(64))]
            bytes.insert(contentsOf: piece, at: random.below(bytes.count))
        }
        return Data(bytes) == data ? data + Data([0]) : Data(bytes)
    }

    @Test(arguments: [false, true])
    func mutatedInputNeverWritesAndAlwaysSaysWhy(armored: Bool) async throws {
        let id = try #require(
            try await CLIRunner.runAsync(["keys", "show", "--json"], home: home.url).jsonObject()["peerId"] as? String)
        // Two chunks and a bit, so that reordering and truncation at a chunk boundary are tried.
        let plain = home.file("plain.bin")
        try Data((0..<(140 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: plain)
        let sealed = home.file(armored ? "sealed.asc" : "sealed.bin")
        var encrypt = ["encrypt", "--input", plain.path, "--recipient", id, "--output", sealed.path]
        if armored { encrypt.append("--armor") }
        #expect(try await CLIRunner.runAsync(encrypt, home: home.url).exitCode == 0)
        let original = try Data(contentsOf: sealed)
        var random = SeededRandom(state: armored ? 0xA5A5 : 0x5A5A)
        for round in 0..<40 {
            let mutant = home.file("mutant-\(round)")
            try Self.mutate(original, &random).write(to: mutant)
            let output = home.file("out-\(round)")
            let result = try await CLIRunner.runAsync(
                ["decrypt", "--input", mutant.path, "--output", output.path], home: home.url)
            #expect(result.exitCode != 0, "round \(round) decrypted a mutated file")
            #expect(!result.stderr.isEmpty, "round \(round) failed without a message")
            #expect(result.stdoutData.isEmpty, "round \(round) wrote to stdout")
            #expect(
                !FileManager.default.fileExists(atPath: output.path), "round \(round) left \(output.lastPathComponent)")
            // And to stdout: nothing either.
            if round % 10 == 0 {
                let piped = try await CLIRunner.runAsync(["decrypt", "--input", mutant.path], home: home.url)
                #expect(piped.exitCode != 0 && piped.stdoutData.isEmpty, "round \(round) wrote plaintext to stdout")
            }
        }
        // The unmutated file still opens: the harness is not refusing everything.
        let good = try await CLIRunner.runAsync(
            ["decrypt", "--input", sealed.path, "--output", home.file("good").path], home: home.url)
        let opened = try Data(contentsOf: home.file("good"))
        let expected = try Data(contentsOf: plain)
        #expect(good.exitCode == 0 && opened == expected)
    }
}
