import MarketCore
import Testing

@testable import MarketFlows

/// Text deltas are held back to a whitespace so that redaction sees a credential whole, however
/// the stream cut it.
@Suite struct DeltaHolderTests {
    @Test func aCredentialSplitAcrossDeltasIsRedactedWhole() {
        let key = "sk-ant-api03-" + String(repeating: "SplitKey", count: 10)
        let redactor = SecretRedactor(knownSecrets: [key])
        let holder = DeltaHolder()
        let cut = key.index(key.startIndex, offsetBy: 20)
        var sent: [String] = []
        for piece in ["the key is ", String(key[..<cut]), String(key[cut...]), " and that is all"] {
            let ready = holder.add(piece)
            if !ready.isEmpty { sent.append(redactor.redact(ready).0) }
        }
        sent.append(redactor.redact(holder.flush()).0)
        let joined = sent.joined()
        #expect(!joined.contains(String(key[..<cut])) && !joined.contains(String(key[cut...])), "\(sent)")
        #expect(joined.hasPrefix("the key is ") && joined.hasSuffix(" and that is all"))
        // Redacting each piece on its own would have let both halves through.
        #expect(redactor.redact(String(key[..<cut])).0 == String(key[..<cut]))
    }

    @Test func textWithoutWhitespaceIsNotHeldForever() {
        let holder = DeltaHolder()
        #expect(holder.add(String(repeating: "x", count: DeltaHolder.maxHeld)) == "")
        #expect(holder.add("y").count == DeltaHolder.maxHeld + 1)
        #expect(holder.flush() == "")
    }
}
