import MarketCore
import Testing

/// A market URL is checked once, wherever it is read: a port outside 1…65535, a space, a
/// control or bidirectional-override character, user info or a fragment is refused by name.
@Suite struct MarketURLTests {
    @Test(arguments: [
        ("ws://127.0.0.1:8080/market", "127.0.0.1", 8080, "/market"),
        ("wss://Market.Example.com/market", "market.example.com", 443, "/market"),
        ("ws://[::1]:65535/market", "::1", 65535, "/market"),
        ("ws://localhost", "localhost", 80, "/"),
    ])
    func aGoodURLIsReadWithItsPort(text: String, host: String, port: Int, path: String) throws {
        let url = try MarketURL(validating: text)
        #expect(url.host == host && url.port == port && url.path == path && url.text == text)
    }

    @Test(arguments: [
        ("ws://127.0.0.1:99999/market", "port"), ("ws://127.0.0.1:65536/market", "port"),
        ("ws://127.0.0.1:0/market", "port"), ("ws://127.0.0.1:-1/market", "port"), ("ws://127.0.0.1:/m", "port"),
        ("ws://127.0.0.1:8o80/m", "port"), ("ws://127.0.0.1:8080/ma rket", "space"),
        ("ws://127.0.0.1:8080/\u{01}m", "control"), ("ws://127.0.0.1:8080/\u{202E}m", "outside ASCII"),
        ("http://127.0.0.1:8080/market", "scheme"), ("ws://user:pw@127.0.0.1/m", "user name"),
        ("ws://127.0.0.1/m#top", "fragment"), ("ws:///market", "host"), ("ws://ex_ample/m", "host"),
        ("ws://[::1/m", "closing ]"), ("", "1 to 2048"),
    ])
    func aBadURLIsRefusedWithTheReason(text: String, reason: String) {
        #expect {
            _ = try MarketURL(validating: text)
        } throws: { error in
            let text = "\(error)"
            return text.contains(reason) && text.contains("expected a ws:// or wss:// URL")
        }
    }
}
