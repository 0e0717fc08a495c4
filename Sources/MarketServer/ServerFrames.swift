import Crypto
import Foundation
import MarketCore
import MarketProtocol

/// Frames the server writes. They carry `from: "market"` and no signature: what a party must be
/// able to trust (the other party's key document, a result) is signed end to end by that party.
enum ServerFrames {
    static let sender = "market"

    static func frame(_ type: MessageType, _ body: some Encodable, nowMs: Int64) -> String {
        let bodyText = json(body)
        // 32 random bytes from one call into the CSPRNG: 16 for the nonce, 16 for the id (a
        // version 4 UUID; `UUID()` opens /dev/urandom each time here).
        var random = SymmetricKey(size: .init(bitCount: 256)).withUnsafeBytes { Array($0) }
        let nonce = Data(random[0..<16])
        random[16 + 6] = random[16 + 6] & 0x0f | 0x40
        random[16 + 8] = random[16 + 8] & 0x3f | 0x80
        let uuid = random.withUnsafeBytes { UUID(uuid: $0.loadUnaligned(fromByteOffset: 16, as: uuid_t.self)) }
        let envelope = Envelope(
            type: type.rawValue, id: uuid.uuidString.lowercased(), from: sender, ts: nowMs,
            nonce: nonce.base64EncodedString(), body: bodyText, sig: "")
        return json(envelope)
    }

    static func error(_ error: MarketError, ref: String?, nowMs: Int64) -> String {
        frame(.error, ErrorBody(code: error.code, message: error.message, ref: ref), nowMs: nowMs)
    }

    static func json(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws(MarketError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(text.utf8))
        } catch let error as DecodingError {
            throw MarketError(.invalidBody, "the body is not a valid \(T.self): \(describe(error))")
        } catch {
            throw MarketError(.invalidBody, "the body is not a valid \(T.self)")
        }
    }

    /// A decoding error as a short sentence naming the field.
    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map(\.stringValue).joined(separator: ".")
            return keys.isEmpty ? "the value" : "'\(keys)'"
        }
        switch error {
        case .keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case .typeMismatch(_, let context): return "\(path(context)) has the wrong type"
        case .valueNotFound(_, let context): return "\(path(context)) is null"
        case .dataCorrupted(let context): return "\(path(context)) is malformed"
        @unknown default: return "malformed"
        }
    }
}
