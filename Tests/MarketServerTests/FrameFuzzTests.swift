import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketStore
import TestSupport
import Testing

/// Random frames and mutations of valid signed frames against a live server: no crash, no
/// hang, every frame answered with an error (or the connection closed), and the books unchanged
/// by anything that was not a valid signed message. Seeded, so a failure repeats.
@Suite struct FrameFuzzTests {

    /// One hostile frame: a mutation of a valid signed envelope, or something that is not one.
    static func hostile(from valid: String, _ random: inout SeededRandom) -> String {
        var characters = Array(valid)
        switch random.below(9) {
        case 0:  // flip a character
            let index = random.below(characters.count)
            characters[index] = Character(UnicodeScalar(UInt8(32 + random.below(95))))
            return String(characters)
        case 1: return String(characters.prefix(random.below(characters.count)))  // truncated
        case 2: return valid + valid  // duplicated
        case 3:  // swapped fields
            return valid.replacingOccurrences(of: "\"type\":", with: "\"tmp\":").replacingOccurrences(
                of: "\"id\":", with: "\"type\":"
            ).replacingOccurrences(of: "\"tmp\":", with: "\"id\":")
        case 4: return valid.replacingOccurrences(of: "\"v\":1", with: "\"v\":\(UInt64.max)1")  // huge number
        case 5: return String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000)  // deep JSON
        case 6: return "{\"v\":1,\"type\":\"task.post\",\"id\":\"x\"}"  // missing fields
        case 7:  // a signed body changed after signing
            return valid.replacingOccurrences(of: "maxPrice", with: "maxPrica")
        default:  // random bytes as text
            return String((0..<(1 + random.below(200))).map { _ in Character(UnicodeScalar(UInt8(random.below(128)))) })
        }
    }

    @Test func hostileFramesAreAnsweredAndChangeNothing() async throws {
        try await TestMarket.with(configure: {
            $0.frameRate = 100_000
            $0.frameBurst = 100_000
        }) { market in
            let requester = TestMarket.newPeer()
            try await market.mint(requester.peerID, 10)
            let before = try await market.audit()
            // 2 000 in the test suite; `scripts/faults.sh` (full) sets 100 000.
            let count = Int(ProcessInfo.processInfo.environment["CMM_FUZZ_FRAMES"] ?? "") ?? 2000
            let answered = try await market.connect(requester) { connection in
                var random = SeededRandom(state: 0xC0FFEE)
                let body = try MarketConnection.encode(PostBody(taskId: "fuzz", maxPrice: 1_000_000))
                var answers = 0
                for index in 0..<count {
                    // A fresh valid envelope each time (fresh nonce), then spoiled.
                    let valid = try requester.identity.envelope(
                        type: .taskPost, id: "f\(index)", body: body, nowMs: market.clock.nowMs)
                    let text = try MarketConnection.encode(valid)
                    let frame = Self.hostile(from: text, &random)
                    guard frame != text else { continue }
                    try await connection.sendRaw(frame)
                    // Every frame is answered (an error naming it, or an error without a ref).
                    let answer = try await connection.next(timeout: .seconds(10)) { _ in true }
                    if answer.type == "error" {
                        answers += 1
                    } else if answer.type == "ack" {
                        // A mutation that is still a valid signed message (it happens: a flipped
                        // character in the nonce) is acted on like any other; refund it.
                        let ack = try answer.decodeBody(AckBody.self)
                        if let task = ack.taskId, ack.state == "open" {
                            try await connection.request(.taskCancel, TaskRefBody(taskId: task)).throwIfError()
                        }
                        answers += 1
                    }
                }
                // Still alive and still answering.
                let pong = try await connection.request(.ping, EmptyBody())
                #expect(pong.type == "pong")
                return answers
            }
            #expect(answered > count * 9 / 10, "\(answered) of \(count) frames answered")
            let after = try await market.audit()
            #expect(after.balanced && after.minted == before.minted)
            #expect(after.accountsTotal == before.accountsTotal)
            let tasks = try await market.store.read { try await $0.tasks(state: nil, limit: 10) }
            #expect(tasks.allSatisfy { $0.state == .cancelled }, "\(tasks.map(\.state))")
        }
    }
}
