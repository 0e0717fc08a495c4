import Foundation
import HummingbirdWSClient
import Logging
import MarketCore
import MarketCrypto
import MarketProtocol
import NIOCore
import Synchronization

/// Why a market connection failed.
public struct MarketClientError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One authenticated WebSocket connection to a market: signed requests, the market's answers
/// matched by message id, and everything else kept in order for `next`.
public final class MarketConnection: Sendable {
    public let keys: KeyRing
    public var peerID: PeerID { keys.peerID }
    let outbound: WebSocketOutboundWriter
    let inbox = Inbox()
    let clock: @Sendable () -> Int64
    private let announcedHeartbeatTimeout = Mutex<Duration?>(nil)

    /// How long the market lets a provider stay silent, as its challenge said (nil before the
    /// handshake, or from a market that does not say).
    public var heartbeatTimeout: Duration? { announcedHeartbeatTimeout.withLock { $0 } }

    init(keys: KeyRing, outbound: WebSocketOutboundWriter, clock: @escaping @Sendable () -> Int64) {
        self.keys = keys
        self.outbound = outbound
        self.clock = clock
    }

    /// Connects to `url` (`ws://host:port/market`), runs the handshake unless `authenticate` is
    /// false, runs `body`, and closes the connection, also when `body` throws.
    public static func with<T: Sendable>(
        url: String, keys: KeyRing, authenticate: Bool = true, logger: Logger = Logger(label: "cmm.client"),
        clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) },
        openTimeout: Duration = .seconds(10), _ body: @escaping @Sendable (MarketConnection) async throws -> T
    ) async throws -> T {
        // Checked before anything connects: a port past 65535 must not wrap to another market's.
        do { _ = try MarketURL(validating: url) } catch { throw MarketClientError("\(error)") }
        let result = ResultBox<T>()
        let opened = Once()
        try await Self.openingWithin(openTimeout, url: url, opened: opened) {
            _ = try await WebSocketClient.connect(
                url: url, configuration: .init(maxFrameSize: 16 << 20), logger: logger
            ) { inbound, outbound, _ in
                guard opened.claim() else { return }  // too late: the caller was told it failed
                let connection = MarketConnection(keys: keys, outbound: outbound, clock: clock)
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        do {
                            for try await message in inbound.messages(maxSize: 32 << 20) {
                                guard case .text(let text) = message else { continue }
                                await connection.inbox.deliver(text)
                            }
                        } catch {}
                        await connection.inbox.close()
                    }
                    do {
                        if authenticate { try await connection.authenticate() }
                        result.set(.success(try await body(connection)))
                    } catch {
                        result.set(.failure(error))
                    }
                    try? await outbound.close(.normalClosure, reason: nil)
                    group.cancelAll()
                }
            }
        }
        return try result.get()
    }

    /// Runs `work` (the WebSocket connect), but gives up when the connection has not opened
    /// (`opened` claimed) within `limit`: the upgrade has no timeout of its own, and a market
    /// killed in the middle of one was seen to leave it waiting forever. The abandoned attempt is
    /// cancelled and left to end on its own.
    static func openingWithin(
        _ limit: Duration, url: String, opened: Once, _ work: @escaping @Sendable () async throws -> Void
    ) async throws {
        let finished = Once()
        let attempt = Mutex<Task<Void, Never>?>(nil)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let task = Task {
                    do {
                        try await work()
                        if finished.claim() { continuation.resume() }
                    } catch {
                        if finished.claim() { continuation.resume(throwing: error) }
                    }
                }
                attempt.withLock { $0 = task }
                Task {
                    try? await Task.sleep(for: limit)
                    // Claiming `opened` here means a late upgrade finds it taken and closes at once.
                    if opened.claim(), finished.claim() {
                        task.cancel()
                        continuation.resume(
                            throwing: MarketClientError("no WebSocket connection to \(url) within \(limit)"))
                    }
                }
            }
        } onCancel: {
            attempt.withLock { $0?.cancel() }
        }
    }

    // MARK: Handshake

    public func authenticate(timeout: Duration = .seconds(10)) async throws {
        let document = String(decoding: try PublicKeyDocument(ring: keys).encoded(), as: UTF8.self)
        let hello = try await send(.hello, HelloBody(keyDocument: document))
        let challenge = try await next(timeout: timeout) {
            $0.type == MessageType.challenge.rawValue || $0.refersTo(hello.id)
        }
        try challenge.throwIfError()
        let body = try JSONDecoder().decode(ChallengeBody.self, from: Data(challenge.body.utf8))
        if let milliseconds = body.heartbeatTimeoutMs, milliseconds > 0 {
            announcedHeartbeatTimeout.withLock { $0 = .milliseconds(milliseconds) }
        }
        let answer = try await request(.auth, AuthBody(challenge: body.nonce), timeout: timeout)
        try answer.throwIfError()
    }

    // MARK: Sending

    /// Signs and sends one message; returns the envelope as sent.
    @discardableResult
    public func send(_ type: MessageType, _ body: some Encodable, id: String = UUID().uuidString.lowercased())
        async throws -> Envelope
    {
        let envelope = try keys.identity.envelope(type: type, id: id, body: Self.encode(body), nowMs: clock())
        try await sendRaw(Self.encode(envelope))
        return envelope
    }

    /// Sends text exactly as given (tests use it for malformed and replayed frames).
    public func sendRaw(_ text: String) async throws {
        try await outbound.write(.text(text))
    }

    /// Sends and waits for the market's `ack` or `error` for this message id.
    public func request(
        _ type: MessageType, _ body: some Encodable, id: String = UUID().uuidString.lowercased(),
        timeout: Duration = .seconds(10)
    ) async throws -> Envelope {
        let sent = try await send(type, body, id: id)
        return try await answer(to: sent.id, timeout: timeout)
    }

    /// The `ack`, `pong` or `error` whose body names `ref`.
    public func answer(to ref: String, timeout: Duration = .seconds(10)) async throws -> Envelope {
        try await inbox.take(timeout: timeout, where: .answer(to: ref))
    }

    // MARK: Receiving

    /// The first frame (oldest first) that matches; frames that don't match stay for later.
    public func next(
        timeout: Duration = .seconds(10), where match: @escaping @Sendable (Envelope) -> Bool = { _ in true }
    )
        async throws -> Envelope
    {
        try await inbox.take(timeout: timeout, where: .custom(match))
    }

    /// The first frame of `type` (for a task, when given).
    public func next(_ type: MessageType, taskId: String? = nil, timeout: Duration = .seconds(10)) async throws
        -> Envelope
    {
        try await inbox.take(timeout: timeout, where: .concerns(type, taskId: taskId))
    }

    /// Frames received and not yet taken.
    public func pending() async -> [Envelope] { await inbox.snapshot() }

    /// The next frame of any kind, or nil when none came within `timeout`; throws once the
    /// connection is closed.
    public func poll(timeout: Duration) async throws -> Envelope? {
        do {
            return try await inbox.take(timeout: timeout, where: .any)
        } catch is InboxTimeout {
            return nil
        }
    }

    public static func encode(_ value: some Encodable) throws -> String {
        if let text = value as? String { return text }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

extension Envelope {
    public var errorBody: ErrorBody? {
        guard type == MessageType.error.rawValue else { return nil }
        return try? JSONDecoder().decode(ErrorBody.self, from: Data(body.utf8))
    }

    public func decodeBody<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(body.utf8))
    }

    /// The body of a frame another peer (or the market) wrote, decoded and checked by the
    /// rules the market checks what it receives with (`WireBody.validate`): a participant acts
    /// only on bodies that pass them. The error says which frame and why.
    public func checkedBody<T: WireBody>(_ type: T.Type, limits: WireLimits = WireLimits()) throws(MarketClientError)
        -> T
    {
        let decoded: T
        do {
            decoded = try decodeBody(T.self)
        } catch {
            throw MarketClientError(
                "a \(WireField.printable(self.type)) frame (id \(WireField.printable(id))) whose body is not a \(T.self): \(error)"
            )
        }
        do {
            try decoded.validate(limits: limits)
        } catch {
            throw MarketClientError(
                "a \(WireField.printable(self.type)) frame (id \(WireField.printable(id))) was refused: \(error.message)"
            )
        }
        return decoded
    }

    /// The market's refusal, typed as the market raised it (its code and message).
    public func throwIfError() throws(MarketError) {
        if let body = errorBody { throw body.error }
    }
}

/// Which frame a caller waits for. What a frame answers or concerns is read from its body once,
/// as it arrives (`FrameSubject`), not again for every caller that looks at it.
enum FrameMatch: Sendable {
    case any
    /// The market's answer (`ack`, `pong`, `error`) to message `ref`.
    case answer(to: String)
    /// A frame of `type` about `taskId` (any task when nil).
    case concerns(MessageType, taskId: String?)
    case custom(@Sendable (Envelope) -> Bool)

    func matches(_ frame: Inbox.Frame) -> Bool {
        switch self {
        case .any: true
        case .answer(let ref):
            [MessageType.ack, .error, .pong].contains(frame.type) && frame.subject.ref == ref
        case .concerns(let type, let taskId):
            frame.type == type && (taskId == nil || frame.subject.taskId == taskId)
        case .custom(let match): match(frame.envelope)
        }
    }
}

/// Frames in arrival order, and the callers waiting for one that matches.
actor Inbox {
    struct Frame: Sendable {
        let envelope: Envelope
        let type: MessageType?
        let subject: FrameSubject
    }

    private var frames: [Frame] = []
    private var waiters: [(id: UUID, match: FrameMatch, continuation: CheckedContinuation<Envelope, any Error>)] = []
    private var closed = false

    func deliver(_ text: String) {
        guard let envelope = try? JSONDecoder().decode(Envelope.self, from: Data(text.utf8)) else { return }
        let frame = Frame(envelope: envelope, type: envelope.messageType, subject: envelope.subject)
        if let index = waiters.firstIndex(where: { $0.match.matches(frame) }) {
            waiters.remove(at: index).continuation.resume(returning: envelope)
        } else {
            frames.append(frame)
        }
    }

    func close() {
        closed = true
        for waiter in waiters {
            waiter.continuation.resume(throwing: MarketClientError("the market closed the connection"))
        }
        waiters.removeAll()
    }

    func snapshot() -> [Envelope] { frames.map(\.envelope) }

    func take(timeout: Duration, where match: FrameMatch) async throws -> Envelope {
        if let index = frames.firstIndex(where: match.matches) { return frames.remove(at: index).envelope }
        if closed { throw MarketClientError("the market closed the connection") }
        let id = UUID()
        let timer = Task {
            try await Task.sleep(for: timeout)
            self.expire(id, after: timeout)
        }
        defer { timer.cancel() }
        return try await withCheckedThrowingContinuation { continuation in
            waiters.append((id, match, continuation))
        }
    }

    private func expire(_ id: UUID, after timeout: Duration) {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return }
        waiters.remove(at: index).continuation.resume(throwing: InboxTimeout(timeout: timeout))
    }
}

/// No matching frame came in time.
struct InboxTimeout: Error, CustomStringConvertible {
    let timeout: Duration
    var description: String { "no matching frame from the market within \(timeout)" }
}

/// Carries the body's result out of the connection's closure.
final class ResultBox<T: Sendable>: Sendable {
    private let value = Mutex<Result<T, any Error>?>(nil)

    func set(_ result: Result<T, any Error>) { value.withLock { $0 = result } }

    func get() throws -> T {
        guard let value = value.withLock({ $0 }) else {
            throw MarketClientError("the connection closed before the exchange finished")
        }
        return try value.get()
    }
}
