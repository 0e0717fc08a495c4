import Foundation
import TestSupport
import Testing

@Suite struct CryptoCommandTests {
    let home = TemporaryDirectory("cmm-cli")

    func run(_ arguments: String..., stdin: Data? = nil, in other: TemporaryDirectory? = nil) throws -> CLIResult {
        try CLIRunner.run(arguments, home: (other ?? home).url, stdin: stdin)
    }

    func peerID(_ directory: TemporaryDirectory? = nil) throws -> String {
        try #require(try run("keys", "show", "--json", in: directory).jsonObject()["peerId"] as? String)
    }

    @Test func keysShowCreatesAnIdentityOnce() throws {
        let first = try run("keys", "show", "--json")
        #expect(first.exitCode == 0)
        let object = try first.jsonObject()
        let id = try #require(object["peerId"] as? String)
        #expect(id.count == 32)
        #expect((object["sealingSuites"] as? [String]) == ["hpke-x25519", "hpke-xwing", "rsa-oaep-2048"])
        #expect(try peerID() == id)
        #expect(try run("status", "--json").jsonObject()["identity"] as? String == id)
        let audit = try run("audit", "--kind", "keys", "--format", "json")
        #expect((try audit.json() as? [[String: Any]])?.count == 1)
        for name in ["identity.json", "sealing.json"] {
            var info = stat()
            stat(home.file("keys/\(name)").path, &info)
            #expect(info.st_mode & 0o777 == 0o600)
        }
    }

    @Test(arguments: ["hpke-x25519", "hpke-xwing", "rsa-oaep-2048"])
    func encryptToAnotherPeerAndDecrypt(suite: String) throws {
        let bob = TemporaryDirectory("cmm-bob")
        let document = bob.file("bob.json")
        #expect(try run("keys", "export-public", "--output", document.path, in: bob).exitCode == 0)
        let plaintext = Data((0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try plaintext.write(to: home.file("plain.bin"))
        let sealed = home.file("plain.sealed")
        let encrypted = try run(
            "encrypt", "--input", home.file("plain.bin").path, "--recipient", document.path, "--output", sealed.path,
            "--suite", suite)
        #expect(encrypted.exitCode == 0, "\(encrypted.stderr)")
        // Alice cannot open what she sealed to Bob.
        let wrong = try run("decrypt", "--input", sealed.path, "--output", home.file("out").path)
        #expect(wrong.exitCode != 0 && wrong.stderr.contains("wrong key"))
        #expect(!FileManager.default.fileExists(atPath: home.file("out").path))
        let opened = try run("decrypt", "--input", sealed.path, in: bob)
        #expect(opened.exitCode == 0)
        #expect(sameBytes(opened.stdoutData, plaintext), "\(opened.stdoutData.count) bytes out")
    }

    @Test func stdinStdoutAndArmor() throws {
        let id = try peerID()
        let armored = try run("encrypt", "--input", "-", "--recipient", id, "--armor", stdin: Data("hello, world".utf8))
        #expect(armored.exitCode == 0)
        #expect(armored.stdout.hasPrefix("-----BEGIN CLAUDE-MAX-MARKET SEALED MESSAGE-----\n"))
        let opened = try run("decrypt", "--input", "-", stdin: armored.stdoutData)
        #expect(opened.stdout == "hello, world")
        let document = try run("keys", "export-public").stdoutData
        let viaStdin = try run("encrypt", "--input", "/dev/null", "--recipient", "-", "--armor", stdin: document)
        #expect(viaStdin.exitCode == 0)
        #expect(try run("decrypt", "--input", "-", stdin: viaStdin.stdoutData).stdout == "")
    }

    @Test func failedDecryptLeavesNothingAndSaysWhy() throws {
        let id = try peerID()
        try Data(repeating: 0x61, count: 300_000).write(to: home.file("plain"))
        let sealed = home.file("sealed")
        #expect(
            try run("encrypt", "--input", home.file("plain").path, "--recipient", id, "--output", sealed.path).exitCode
                == 0)
        let data = try Data(contentsOf: sealed)
        var flipped = data
        flipped[flipped.count - 10] ^= 1
        let cases: [(Data, String)] = [
            (flipped, "altered"), (data.prefix(data.count - 100), "truncated"),
            (data.prefix(40_000 + 1_190), "truncated"),
            (Data("hello".utf8), "not a claude-max-market sealed file"),
        ]
        for (bytes, reason) in cases {
            try bytes.write(to: home.file("bad"))
            let output = home.file("decrypted")
            let result = try run("decrypt", "--input", home.file("bad").path, "--output", output.path)
            #expect(result.exitCode != 0)
            #expect(result.stderr.contains(reason), "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: output.path))
            let toStdout = try run("decrypt", "--input", home.file("bad").path)
            #expect(toStdout.exitCode != 0 && toStdout.stdout.isEmpty)
        }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: home.path).filter {
            $0.hasSuffix(".partial")
        }
        #expect(leftovers.isEmpty)
    }

    @Test func badArgumentsAreRefused() throws {
        let id = try peerID()
        let unknownSuite = try run("encrypt", "--input", "/dev/null", "--recipient", id, "--suite", "rot13")
        #expect(unknownSuite.exitCode != 0 && unknownSuite.stderr.contains("hpke-x25519"))
        let unknownPeer = try run(
            "encrypt", "--input", "/dev/null", "--recipient", String(repeating: "a", count: 32), "--armor")
        #expect(unknownPeer.exitCode != 0 && unknownPeer.stderr.contains("export-public"))
        let missing = try run("encrypt", "--input", "/nonexistent", "--recipient", id, "--armor")
        #expect(missing.exitCode != 0 && missing.stderr.contains("/nonexistent"))
        let forged = home.file("forged.json")
        var document = try run("keys", "export-public").stdout
        document = document.replacingOccurrences(of: "\"version\" : 1", with: "\"version\" : 1 ")
        document = document.replacingOccurrences(of: id, with: String(id.reversed()))
        try Data(document.utf8).write(to: forged)
        let refused = try run("encrypt", "--input", "/dev/null", "--recipient", forged.path, "--armor")
        #expect(refused.exitCode != 0 && refused.stderr.contains("recipient file"))
    }

    @Test func rotationIsAuditedAndOldFilesStillOpen() throws {
        let id = try peerID()
        let old = try run("encrypt", "--input", "-", "--recipient", id, "--armor", stdin: Data("before".utf8))
        #expect(try run("keys", "rotate", "--json").exitCode == 0)
        #expect(try run("decrypt", "--input", "-", stdin: old.stdoutData).stdout == "before")
        let noTTY = try run("keys", "rotate", "--identity")
        #expect(noTTY.exitCode != 0)
        let identity = try run("keys", "rotate", "--identity", "--yes", "--json")
        #expect(identity.exitCode == 0)
        #expect(try identity.jsonObject()["oldPeerID"] as? String == id)
        #expect(try peerID() != id)
        let kinds = try #require(try run("audit", "--kind", "keys", "--format", "json").json() as? [[String: Any]])
            .compactMap { $0["kind"] as? String }
        #expect(kinds == ["keys.created", "keys.rotated", "keys.identity-rotated"])
        #expect(try run("audit", "--verify").exitCode == 0)
    }

    @Test func complianceCheckReportsKeyModesAndAge() throws {
        _ = try peerID()
        var checks = try #require(try run("compliance-check", "--json").jsonObject()["checks"] as? [[String: Any]])
        #expect(checks.first { $0["id"] as? String == "keys.age" }?["status"] as? String == "pass")
        chmod(home.file("keys/identity.json").path, 0o644)
        let result = try run("compliance-check", "--json")
        checks = try #require(try result.jsonObject()["checks"] as? [[String: Any]])
        let permissions = checks.first { $0["id"] as? String == "files.permissions" }
        #expect(permissions?["status"] as? String == "fail")
        #expect((permissions?["message"] as? String)?.contains("identity.json") == true)
    }
}
