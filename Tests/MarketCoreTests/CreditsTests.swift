import MarketCore
import MarketProtocol
import Testing

@Suite struct CreditsTests {
    @Test(arguments: [("5", Int64(5_000_000)), ("0.25", 250_000), ("12.000001", 12_000_001), ("3 RUV", 3_000_000)])
    func parses(text: String, micro: Int64) throws {
        #expect(try Credits(parsing: text).micro == micro)
    }

    @Test(arguments: ["", "abc", "1.2345678", "1.", ".5", "1e3", "--1", "9223372036854.775808", "99999999999999999999"])
    func refuses(text: String) {
        #expect(throws: CreditsError.self) { try Credits(parsing: text) }
    }

    @Test func arithmeticIsOverflowChecked() throws {
        let big = Credits(micro: .max)
        #expect(throws: CreditsError.self) { try big.adding(Credits(micro: 1)) }
        #expect(throws: CreditsError.self) { try Credits(micro: .min).subtracting(Credits(micro: 1)) }
        #expect(throws: CreditsError.self) { try Credits(whole: .max / 2) }
        #expect(try Credits(micro: 1).adding(Credits(micro: 2)).micro == 3)
    }

    @Test func displays() {
        #expect(Credits(micro: 5_000_000).description == "5 RUV")
        #expect(Credits(micro: -1_500_000).description == "-1.5 RUV")
        #expect(Credits(micro: 1).amountString == "0.000001")
    }
}

@Suite struct PeerIDTests {
    @Test func base32RoundTrips() {
        for length in 0..<40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let text = Base32.encode(bytes)
            #expect(Base32.decode(text) == bytes)
        }
        #expect(Base32.encode(Array("foobar".utf8)) == "mzxw6ytboi")
    }

    @Test func validatesShape() throws {
        let id = PeerID(digestPrefix: [UInt8](repeating: 0xab, count: 20))
        #expect(id.rawValue.count == 32)
        #expect(try PeerID(validating: id.rawValue) == id)
        #expect(throws: PeerIDError.self) { try PeerID(validating: "short") }
        #expect(throws: PeerIDError.self) { try PeerID(validating: id.rawValue.uppercased()) }
        #expect(throws: PeerIDError.self) { try PeerID(validating: String(id.rawValue.dropLast()) + "1") }
    }
}

@Suite struct SecretRedactorTests {
    @Test func removesKnownSecretsAndAnthropicShapedTokens() {
        let redactor = SecretRedactor(knownSecrets: ["my-handed-over-key-123"])
        let api = "sk-ant-api03-" + String(repeating: "x9Y_", count: 20)
        let oauth = "sk-ant-oat01-" + String(repeating: "AbC-", count: 12)
        let (text, count) = redactor.redact("a my-handed-over-key-123 b \(api) c \"\(oauth)\" d sk-ant-short")
        #expect(count == 3)
        #expect(!text.contains("my-handed-over-key-123") && !text.contains(api) && !text.contains(oauth))
        #expect(text.contains("sk-ant-short"))
        #expect(text.hasPrefix("a [REDACTED] b [REDACTED] c \"[REDACTED]\" d"))
    }

    @Test func leavesOrdinaryTextAlone() {
        let (text, count) = SecretRedactor(knownSecrets: ["short"]).redact("a short story about sk-ants")
        #expect(count == 0 && text == "a short story about sk-ants")
    }
}

@Suite struct EnvelopeTests {
    @Test func signingBytesAreUnambiguous() {
        let a = Envelope(type: "ping", id: "ab", from: "c", ts: 1, nonce: "n", body: "{}")
        let b = Envelope(type: "ping", id: "a", from: "bc", ts: 1, nonce: "n", body: "{}")
        #expect(a.signingBytes != b.signingBytes)
        #expect(a.signingBytes.starts(with: Array(Envelope.signingDomain.utf8)))
        #expect(a.messageType == .ping)
        #expect(Envelope(type: "bogus", id: "", from: "", ts: 0, nonce: "", body: "").messageType == nil)
    }
}

/// Counts a peer claims (free slots in a read view, amounts in a settlement) are summed without
/// trapping: two of Int.max crashed `submit` under the hostile market.
@Test func countsFromAPeerSumWithoutTrapping() {
    #expect([Int.max, Int.max, 1].saturatingSum() == Int.max)
    #expect([Int.min, -1].saturatingSum() == Int.min)
    #expect([Int64(2), 3, -1].saturatingSum() == 4)
    #expect(Int64.max.saturatingAdd(1) == .max)
}
