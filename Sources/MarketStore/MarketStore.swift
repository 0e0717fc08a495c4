import Foundation
import MarketCore

/// The market's storage: one port, two implementations (SQLite, the embedded default, and
/// PostgreSQL for several servers on one database). Every operation is one transaction.
public protocol MarketStore: Sendable {
    /// Runs `body` in one write transaction: everything it wrote, or nothing.
    func write<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws -> T
    /// Runs `body` on a consistent snapshot.
    func read<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws -> T
    /// What `/health` names as the backend.
    var backendName: String { get }
    /// How many write transactions may usefully run at once (a group commit keeps this many
    /// batches in flight).
    var writeConcurrency: Int { get }
    /// The group commit's limits when `market serve` is not told otherwise.
    var groupCommitDefaults: GroupCommit.Limits { get }
    func close() async throws
}

extension MarketStore {
    public var writeConcurrency: Int { 1 }
    public var groupCommitDefaults: GroupCommit.Limits { GroupCommit.Limits() }
}

/// Passes frames between server instances that share one database: a frame for a peer that is
/// connected to another instance is published, and every instance delivers what it hears to the
/// peers connected to it.
public protocol MarketRelay: Sendable {
    func publish(_ text: String, to peer: PeerID) async throws
    func listen(_ deliver: @escaping @Sendable (PeerID, String) -> Void) async throws
}

/// Where the market keeps its books: `sqlite:PATH` or `postgres://user@host:port/db`.
public enum MarketDatabaseLocation: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(url: String)

    public init(parsing text: String) throws(MarketError) {
        if text.hasPrefix("sqlite:") {
            let path = String(text.dropFirst("sqlite:".count))
            guard !path.isEmpty else {
                throw MarketError(.invalidBody, "--db sqlite: needs a path (sqlite:/var/lib/market.sqlite)")
            }
            self = .sqlite(path: path)
        } else if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            self = .postgres(url: text)
        } else {
            throw MarketError(
                .invalidBody, "--db '\(text)' is not sqlite:PATH or postgres://USER@HOST:PORT/DATABASE")
        }
    }

    /// Never prints a password.
    public var description: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgres(let url):
            if let components = URLComponents(string: url) {
                "postgres://\(components.user ?? "")@\(components.host ?? ""):\(components.port ?? 5432)\(components.path)"
            } else {
                "postgres://…"
            }
        }
    }
}
