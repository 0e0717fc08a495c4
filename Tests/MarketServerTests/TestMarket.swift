import Foundation
import Logging
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketServer
import MarketStore
import ServiceLifecycle
import Synchronization
import TestSupport

/// A market server on loopback with a real SQLite file (or the given store), for one test.
struct TestMarket: Sendable {
    let server: MarketServer
    let store: any MarketStore
    let port: Int
    let book: MarketBook
    let clock: TestClock

    var url: String { "ws://127.0.0.1:\(port)/market" }
    var httpBase: String { "http://127.0.0.1:\(port)" }

    /// One sealing key set for every simulated peer: RSA key generation costs ~50 ms each.
    static let sharedSealing: SealingKeySet = try! SealingKeySet.generate(at: Date())

    static func newPeer() -> KeyRing { KeyRing.inMemory(sealing: sharedSealing) }

    /// `frozenClock`: the market's and its peers' time moves only when the test advances it, so
    /// that nothing time-based (a token bucket's refill, a deadline) happens by itself.
    static func with<T: Sendable>(
        rules: MarketRules = MarketRules(), configure: (inout MarketServerConfiguration) -> Void = { _ in },
        store makeStore: ((URL) throws -> any MarketStore)? = nil, directory: TemporaryDirectory? = nil,
        frozenClock: Bool = false, _ body: @escaping @Sendable (TestMarket) async throws -> T
    ) async throws -> T {
        let directory = directory ?? TemporaryDirectory("cmm-market")
        let store = try makeStore?(directory.url) ?? SQLiteMarketStore(path: directory.file("market.sqlite").path)
        var configuration = MarketServerConfiguration(host: "127.0.0.1", port: 0, rules: rules)
        configure(&configuration)
        let clock = TestClock(frozen: frozenClock)
        // The server says when it listens, and on which port: nothing polls for it.
        let (listening, listened) = AsyncStream.makeStream(of: Int.self)
        let server = try MarketServer(
            configuration: configuration, store: store, logger: Logger(label: "test.market"), now: { clock.nowMs },
            onRunning: { port in
                listened.yield(port)
                listened.finish()
            })
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: server)], logger: Logger(label: "test.group")))
        let running = Task {
            defer { listened.finish() }
            try await group.run()
        }
        var ports = listening.makeAsyncIterator()
        guard let port = await ports.next() else {
            _ = try? await running.value
            throw CLIRunnerError(description: "the market did not start")
        }
        let market = TestMarket(server: server, store: store, port: port, book: MarketBook(rules: rules), clock: clock)
        do {
            let result = try await body(market)
            await group.triggerGracefulShutdown()
            try await running.value
            try await store.close()
            _ = directory
            return result
        } catch {
            await group.triggerGracefulShutdown()
            _ = try? await running.value
            try? await store.close()
            throw error
        }
    }

    func mint(_ peer: PeerID, _ whole: Int64) async throws {
        let book = self.book
        let nowMs = clock.nowMs
        _ = try await store.write {
            try await book.mint(to: peer, amount: try Credits(whole: whole), memo: "test", nowMs: nowMs, in: $0)
        }
    }

    func balance(_ account: Account) async throws -> Credits {
        try await store.read { try await $0.balance(account) }
    }

    func task(_ id: String) async throws -> MarketTask? {
        try await store.read { try await $0.task(id, lock: false) }
    }

    func audit() async throws -> LedgerAudit {
        let book = self.book
        return try await store.read { try await book.audit(in: $0) }
    }

    @discardableResult
    func connect<T: Sendable>(
        _ keys: KeyRing = TestMarket.newPeer(), authenticate: Bool = true,
        _ body: @escaping @Sendable (MarketConnection) async throws -> T
    ) async throws -> T {
        let clock = self.clock
        return try await MarketConnection.with(
            url: url, keys: keys, authenticate: authenticate, clock: { clock.nowMs }, body)
    }
}

/// Unix milliseconds that follow the wall clock plus an offset the test moves; frozen, they
/// stand at the moment the clock was made, plus that offset, and nothing else moves them.
final class TestClock: Sendable {
    private let offset = Atomic<Int64>(0)
    private let frozenAt: Int64?

    init(frozen: Bool = false) {
        frozenAt = frozen ? Int64(Date().timeIntervalSince1970 * 1000) : nil
    }

    var nowMs: Int64 {
        (frozenAt ?? Int64(Date().timeIntervalSince1970 * 1000)) + offset.load(ordering: .relaxed)
    }

    func advance(seconds: Int64) { offset.add(seconds * 1000, ordering: .relaxed) }
}

func micro(_ whole: Int64) -> Int64 { whole * Credits.scale }

extension KeyRing {
    /// A signed envelope with any type string and timestamp (for frames the market must refuse).
    func forged(type: String, body: String, ts: Int64, id: String = UUID().uuidString) throws -> String {
        var nonce = Data(count: 16)
        for index in nonce.indices { nonce[index] = UInt8.random(in: 0...255) }
        var envelope = Envelope(
            type: type, id: id, from: peerID.rawValue, ts: ts, nonce: nonce.base64EncodedString(), body: body)
        envelope.sig = try identity.sign(envelope.signingBytes).base64EncodedString()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(envelope), as: UTF8.self)
    }
}

extension MarketConnection {
    /// Sends raw text and returns the error code of the market's answer.
    func refusedRaw(_ text: String, ref: String? = nil) async throws -> String {
        try await sendRaw(text)
        let answer = try await next { envelope in
            envelope.type == "error" && (ref == nil || envelope.refersTo(ref!))
        }
        return answer.errorBody?.code.rawValue ?? "none"
    }

    /// Sends and expects an `ack`; returns its body.
    @discardableResult
    func ok(_ type: MessageType, _ body: some Encodable, id: String = UUID().uuidString.lowercased()) async throws
        -> AckBody
    {
        let answer = try await request(type, body, id: id)
        try answer.throwIfError()
        return try answer.decodeBody(AckBody.self)
    }

    /// Sends and expects an `error`; returns its code.
    func refused(_ type: MessageType, _ body: some Encodable) async throws -> String {
        let answer = try await request(type, body)
        guard let error = answer.errorBody else {
            throw MarketClientError("expected an error for \(type.rawValue), got \(answer.type): \(answer.body)")
        }
        return error.code.rawValue
    }
}
