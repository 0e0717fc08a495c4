import MarketCore
import Synchronization

/// The live connections, by authenticated peer: how the server reaches a party of a task.
/// A peer may hold several connections (a daemon and a CLI); a message goes to all of them.
final class PeerHub: Sendable {
    struct Connection: Sendable {
        let id: Int
        let send: @Sendable (String) -> Void
    }

    private struct State {
        var byPeer: [PeerID: [Connection]] = [:]
        var buckets: [PeerID: TokenBucket] = [:]
        var total = 0
    }

    private let state = Mutex(State())
    let frameRate: Double
    let frameBurst: Double

    init(frameRate: Double, frameBurst: Double) {
        self.frameRate = frameRate
        self.frameBurst = frameBurst
    }

    /// Takes one frame from the peer's budget, shared by all of its connections.
    func takeToken(_ peer: PeerID, nowMs: Int64) -> Bool {
        state.withLock { state in
            var bucket = state.buckets[peer] ?? TokenBucket(rate: frameRate, burst: frameBurst, nowMs: nowMs)
            let allowed = bucket.take(nowMs: nowMs)
            state.buckets[peer] = bucket
            return allowed
        }
    }

    func add(_ peer: PeerID, _ connection: Connection) {
        state.withLock { state in
            state.byPeer[peer, default: []].append(connection)
            state.total += 1
        }
    }

    func remove(_ peer: PeerID, connectionID: Int) {
        state.withLock { state in
            let before = state.byPeer[peer]?.count ?? 0
            state.byPeer[peer]?.removeAll { $0.id == connectionID }
            state.total -= before - (state.byPeer[peer]?.count ?? 0)
            if state.byPeer[peer]?.isEmpty == true {
                state.byPeer[peer] = nil
                state.buckets[peer] = nil
            }
        }
    }

    /// True when at least one connection of the peer took the message.
    @discardableResult
    func send(_ text: String, to peer: PeerID) -> Bool {
        let connections = state.withLock { $0.byPeer[peer] ?? [] }
        for connection in connections { connection.send(text) }
        return !connections.isEmpty
    }

    func isConnected(_ peer: PeerID) -> Bool { state.withLock { $0.byPeer[peer] != nil } }

    var connectedPeers: [PeerID] { state.withLock { Array($0.byPeer.keys) } }

    var authenticatedConnections: Int { state.withLock { $0.total } }

    /// Sends every connection a last message before the server closes them.
    func broadcastAll(_ text: String) {
        let all = state.withLock { $0.byPeer.values.flatMap { $0 } }
        for connection in all { connection.send(text) }
    }
}

/// A token bucket: `rate` frames a second, bursts up to `burst`.
struct TokenBucket: Sendable {
    let rate: Double
    let burst: Double
    private var tokens: Double
    private var lastMs: Int64

    init(rate: Double, burst: Double, nowMs: Int64) {
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.lastMs = nowMs
    }

    mutating func take(nowMs: Int64) -> Bool {
        if nowMs > lastMs {
            tokens = min(burst, tokens + Double(nowMs - lastMs) * rate / 1000)
            lastMs = nowMs
        }
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}

/// Every open connection, authenticated or not, so that shutdown can close them all.
final class ConnectionRegistry: Sendable {
    private let closers = Mutex<[Int: @Sendable (String) -> Void]>([:])

    func add(_ id: Int, close: @escaping @Sendable (String) -> Void) {
        closers.withLock { $0[id] = close }
    }

    func remove(_ id: Int) {
        _ = closers.withLock { $0.removeValue(forKey: id) }
    }

    func closeAll(reason: String) {
        for close in closers.withLock({ Array($0.values) }) { close(reason) }
    }

    /// Waits (up to `timeout`) until every connection has ended after `closeAll`.
    func waitUntilEmpty(timeout: Duration) async {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline, !closers.withLock({ $0.isEmpty }) {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
}
