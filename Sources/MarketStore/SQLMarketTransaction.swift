import MarketCore

/// `MarketTransaction` written once for both databases: every statement of the books is here
/// (or in `TaskRow`), as one text unless the dialects make it two, and runs on the session of
/// whichever store opened the transaction. What a database's refusal means (a duplicate, a
/// CHECK by its name) is decided here too, the same for both.
struct SQLMarketTransaction: MarketTransaction {
    let session: any SQLSession

    var dialect: SQLDialect { session.dialect }

    @discardableResult
    func rows(_ sql: SQL, _ values: [SQLValue] = []) async throws -> [SQLRow] {
        do {
            return try await session.rows(sql, values)
        } catch {
            if case .check(let constraint) = session.failure(of: error) { throw Self.checkViolation(constraint) }
            throw error
        }
    }

    /// A statement outside the books' own (a test's, a migration's): run once, nothing bound,
    /// its refusal told apart as any other.
    func run(_ script: String) async throws {
        do {
            try await session.execute(script: script)
        } catch {
            if case .check(let constraint) = session.failure(of: error) { throw Self.checkViolation(constraint) }
            throw error
        }
    }

    func one(_ sql: SQL, _ values: [SQLValue] = []) async throws -> SQLRow? {
        try await rows(sql, values).first
    }

    /// A CHECK the books refused, told apart by the constraint's name.
    static func checkViolation(_ constraint: String?) -> MarketError {
        switch constraint {
        case "accounts_check":
            MarketError(.insufficientFunds, "the movement would take an account below zero")
        case "ledger_amount_check":
            MarketError(.invalidAmount, "a ledger movement must be positive")
        case "ledger_check":
            MarketError(.invalidAmount, "a ledger movement must go from one account to another")
        default:
            MarketError(.internalError, "the books refused a write (constraint \(constraint ?? "unnamed"))")
        }
    }

    // MARK: Peers

    static let peerSQL = SQL(
        """
        SELECT key_document, first_seen, last_seen, audit_head, rep_s, rep_f, rep_n, rep_at, settled_jobs, hand_backs
        FROM peers WHERE id = $1
        """)

    func peer(_ id: PeerID) async throws -> PeerRecord? {
        guard let row = try await one(Self.peerSQL, [.text(id.rawValue)]) else { return nil }
        return try Self.peer(id, row)
    }

    /// The peer in a row's first ten columns (`peerSQL`'s).
    static func peer(_ id: PeerID, _ row: SQLRow) throws -> PeerRecord {
        PeerRecord(
            id: id, keyDocument: try row.text(0), firstSeenMs: try row.int64(1), lastSeenMs: try row.int64(2),
            auditHead: try row.optionalText(3),
            reputation: Reputation(
                successes: try row.double(4), failures: try row.double(5), samples: try row.int(6),
                atMs: try row.int64(7)),
            settledJobs: try row.int(8), handBacks: try row.int(9))
    }

    static let peersSQL = SQL(
        """
        SELECT key_document, first_seen, last_seen, audit_head, rep_s, rep_f, rep_n, rep_at, settled_jobs, hand_backs, id
        FROM peers WHERE id = $1 OR id = $2
        """)

    func peers(_ first: PeerID, _ second: PeerID) async throws -> [PeerID: PeerRecord] {
        var records: [PeerID: PeerRecord] = [:]
        for row in try await rows(Self.peersSQL, [.text(first.rawValue), .text(second.rawValue)]) {
            let id = try row.text(10)
            guard let peer = [first, second].first(where: { $0.rawValue == id }) else { continue }
            records[peer] = try Self.peer(peer, row)
        }
        return records
    }

    static let countHandBackSQL = SQL("UPDATE peers SET hand_backs = hand_backs + 1 WHERE id = $1")

    func countHandBack(of provider: PeerID) async throws {
        try await rows(Self.countHandBackSQL, [.text(provider.rawValue)])
    }

    static let upsertPeerSQL = SQL(
        """
        INSERT INTO peers (id, key_document, first_seen, last_seen) VALUES ($1, $2, $3, $3)
        ON CONFLICT (id) DO UPDATE SET key_document = excluded.key_document, last_seen = excluded.last_seen
        """)

    func upsertPeer(_ id: PeerID, keyDocument: String, nowMs: Int64) async throws {
        try await rows(Self.upsertPeerSQL, [.text(id.rawValue), .text(keyDocument), .integer(nowMs)])
    }

    static let touchPeerSQL = SQL(
        "UPDATE peers SET last_seen = $1, audit_head = coalesce($2, audit_head) WHERE id = $3")

    func touchPeer(_ id: PeerID, nowMs: Int64, auditHead: String?) async throws {
        try await rows(Self.touchPeerSQL, [.integer(nowMs), .optional(auditHead), .text(id.rawValue)])
    }

    static let updateStandingSQL = SQL(
        "UPDATE peers SET rep_s = $1, rep_f = $2, rep_n = $3, rep_at = $4, settled_jobs = $5 WHERE id = $6")

    static func standingValues(_ id: PeerID, reputation: Reputation, settledJobs: Int) -> [SQLValue] {
        [
            .real(reputation.successes), .real(reputation.failures), .int(reputation.samples),
            .integer(reputation.atMs), .int(settledJobs), .text(id.rawValue),
        ]
    }

    func updateStanding(_ id: PeerID, reputation: Reputation, settledJobs: Int) async throws {
        try await rows(
            Self.updateStandingSQL, Self.standingValues(id, reputation: reputation, settledJobs: settledJobs))
    }

    static let standingSQL = SQL(
        "SELECT (SELECT settled_jobs FROM peers WHERE id = $1), (SELECT balance FROM accounts WHERE name = $2)")

    func standing(of provider: PeerID) async throws -> ProviderStanding {
        let held = Account.held(provider).description
        let row = try await one(Self.standingSQL, [.text(provider.rawValue), .text(held)])
        return ProviderStanding(
            settledJobs: try row?.optionalInt(0) ?? 0, heldBack: Credits(micro: try row?.optionalInt64(1) ?? 0))
    }

    static let peerCountSQL = SQL("SELECT count(*) FROM peers")

    func peerCount() async throws -> Int {
        try await one(Self.peerCountSQL)?.int(0) ?? 0
    }

    static let silentProvidersSQL = SQL(
        """
        SELECT id FROM peers WHERE last_seen < $1 AND (
            id IN (SELECT provider FROM offers)
            OR id IN (SELECT provider FROM tasks WHERE state IN ('assigned', 'running')))
        """)

    func silentProviders(lastSeenBefore cutoffMs: Int64) async throws -> [PeerID] {
        try await rows(Self.silentProvidersSQL, [.integer(cutoffMs)]).compactMap {
            try? PeerID(validating: try $0.text(0))
        }
    }

    // MARK: Replay cache and idempotency

    static let insertNonceSQL = SQL(
        "INSERT INTO nonces (peer, nonce, expires) VALUES ($1, $2, $3) ON CONFLICT (peer, nonce) DO NOTHING RETURNING 1"
    )

    func insertNonce(peer: String, nonce: String, expiresMs: Int64) async throws -> Bool {
        try await rows(Self.insertNonceSQL, [.text(peer), .text(nonce), .integer(expiresMs)]).count == 1
    }

    static let nonceCountSQL = SQL("SELECT count(*) FROM nonces")

    func nonceCount() async throws -> Int {
        try await one(Self.nonceCountSQL)?.int(0) ?? 0
    }

    static let purgeNoncesSQL = SQL("DELETE FROM nonces WHERE expires < $1 RETURNING 1")

    func purgeNonces(expiredBefore nowMs: Int64) async throws -> Int {
        try await rows(Self.purgeNoncesSQL, [.integer(nowMs)]).count
    }

    static let messageResultSQL = SQL("SELECT result FROM messages WHERE peer = $1 AND id = $2")

    func messageResult(peer: PeerID, id: String) async throws -> String? {
        try await one(Self.messageResultSQL, [.text(peer.rawValue), .text(id)])?.text(0)
    }

    /// PostgreSQL: the nonce and the message's answer in one statement (one round trip); the
    /// answer is read only when the nonce was fresh. SQLite, which has no writing CTEs, takes two.
    static let claimSQL = SQL(
        """
        WITH spent AS (
            INSERT INTO nonces (peer, nonce, expires) VALUES ($1, $2, $3) ON CONFLICT (peer, nonce) DO NOTHING RETURNING 1)
        SELECT (SELECT count(*) FROM spent), (SELECT result FROM messages WHERE peer = $1 AND id = $4)
        """)

    func claim(nonce: String, peer: PeerID, expiresMs: Int64, messageID: String) async throws -> FrameClaim {
        let fresh: Bool
        let answer: String?
        switch dialect {
        case .postgres:
            let row = try await one(
                Self.claimSQL, [.text(peer.rawValue), .text(nonce), .integer(expiresMs), .text(messageID)])
            fresh = try row?.int64(0) == 1
            answer = try row?.optionalText(1)
        case .sqlite:
            fresh = try await insertNonce(peer: peer.rawValue, nonce: nonce, expiresMs: expiresMs)
            answer = fresh ? try await messageResult(peer: peer, id: messageID) : nil
        }
        guard fresh else { return .replayed }
        return answer.map(FrameClaim.answered) ?? .fresh
    }

    static let recordMessageSQL = SQL("INSERT INTO messages (peer, id, result, at) VALUES ($1, $2, $3, $4)")

    func recordMessage(peer: PeerID, id: String, result: String, nowMs: Int64) async throws {
        try await rows(Self.recordMessageSQL, [.text(peer.rawValue), .text(id), .text(result), .integer(nowMs)])
    }

    static let purgeMessagesSQL = SQL("DELETE FROM messages WHERE at < $1")

    func purgeMessages(before cutoffMs: Int64) async throws {
        try await rows(Self.purgeMessagesSQL, [.integer(cutoffMs)])
    }

    // MARK: Ledger

    static let balanceSQL = SQL("SELECT balance FROM accounts WHERE name = $1")

    func balance(_ account: Account) async throws -> Credits {
        Credits(micro: try await one(Self.balanceSQL, [.text(account.description)])?.int64(0) ?? 0)
    }

    func insertMovement(_ movement: Movement, nowMs: Int64) async throws {
        try await LedgerMovement(movement, nowMs: nowMs).apply(in: self)
    }

    static let allMovementsSQL = SQL("SELECT id, debit, credit, amount FROM ledger ORDER BY id")

    func allMovements() async throws -> [(id: Int64, from: String, to: String, amountMicro: Int64)] {
        try await rows(Self.allMovementsSQL).map { row in
            (try row.int64(0), try row.text(1), try row.text(2), try row.int64(3))
        }
    }

    static let allBalancesSQL = SQL("SELECT name, balance FROM accounts")

    func allBalances() async throws -> [String: Int64] {
        var balances: [String: Int64] = [:]
        for row in try await rows(Self.allBalancesSQL) { balances[try row.text(0)] = try row.int64(1) }
        return balances
    }

    static let movementsSQL = SQL(
        """
        SELECT debit, credit, amount, kind, task_id, memo FROM ledger WHERE debit = $1 OR credit = $1
        ORDER BY id DESC LIMIT $2
        """)

    func movements(account: String, limit: Int) async throws -> [Movement] {
        try await rows(Self.movementsSQL, [.text(account), .int(limit)]).compactMap { row in
            guard let from = Account(try row.text(0)), let to = Account(try row.text(1)),
                let kind = MovementKind(rawValue: try row.text(3))
            else { return nil }
            return Movement(
                from: from, to: to, amount: Credits(micro: try row.int64(2)), kind: kind,
                taskID: try row.optionalText(4), memo: try row.optionalText(5))
        }
    }

    // MARK: Offers

    static let offerColumns =
        "o.provider, o.price, o.slots, o.models, o.min_requester_rep, o.created, o.max_ws_bytes, o.max_ws_files, o.paused_until, o.paused_for"
    static let offerSQL = SQL("SELECT \(offerColumns) FROM offers o WHERE o.provider = $1")
    static let offersSQL = SQL("SELECT \(offerColumns) FROM offers o ORDER BY o.price, o.created")

    func offer(of provider: PeerID) async throws -> Offer? {
        try await one(Self.offerSQL, [.text(provider.rawValue)]).map(Self.offer)
    }

    func offers() async throws -> [Offer] {
        try await rows(Self.offersSQL).map(Self.offer)
    }

    /// The offer in a row's first ten columns (`offerColumns`).
    static func offer(_ row: SQLRow) throws -> Offer {
        let provider = try row.text(0)
        guard let id = try? PeerID(validating: provider) else {
            throw MarketError(.internalError, "an offer is stored under a malformed peer id '\(provider)'")
        }
        return Offer(
            provider: id, price: Credits(micro: try row.int64(1)), slots: try row.int(2),
            models: OfferModels.models(try row.text(3)), minRequesterReputation: try row.double(4),
            createdMs: try row.int64(5), maxWorkspaceBytes: try row.optionalInt64(6),
            maxWorkspaceFiles: try row.optionalInt64(7), pausedUntilMs: try row.optionalInt64(8),
            pausedFor: try row.optionalText(9))
    }

    static let candidatesText = """
        SELECT \(offerColumns),
            (SELECT count(*) FROM tasks t WHERE t.provider = o.provider AND t.state IN ('assigned', 'running')),
            p.rep_s, p.rep_f, p.rep_n, p.rep_at
        FROM offers o LEFT JOIN peers p ON p.id = o.provider
        WHERE o.price <= $1 AND (CAST($2 AS TEXT) IS NULL OR o.provider = $2)
        ORDER BY o.provider
        """
    static let candidatesSQL = SQL(candidatesText)
    static let lockedCandidatesSQL = SQL.locking(candidatesText, of: "o")

    func offerCandidates(maxPrice: Credits?, provider: PeerID?, lock: Bool) async throws -> [(
        offer: Offer, busySlots: Int, reputation: Reputation
    )] {
        try await rows(
            lock ? Self.lockedCandidatesSQL : Self.candidatesSQL,
            [.integer(maxPrice?.micro ?? Int64.max), .optional(provider?.rawValue)]
        ).map { row in
            (
                try Self.offer(row), try row.int(10),
                Reputation(
                    successes: try row.optionalDouble(11) ?? 0, failures: try row.optionalDouble(12) ?? 0,
                    samples: try row.optionalInt(13) ?? 0, atMs: try row.optionalInt64(14) ?? 0)
            )
        }
    }

    static let putOfferSQL = SQL(
        """
        INSERT INTO offers (provider, price, slots, models, min_requester_rep, created, max_ws_bytes, max_ws_files,
                paused_until, paused_for)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        ON CONFLICT (provider) DO UPDATE SET price = excluded.price, slots = excluded.slots, models = excluded.models,
            min_requester_rep = excluded.min_requester_rep, max_ws_bytes = excluded.max_ws_bytes,
            max_ws_files = excluded.max_ws_files, paused_until = excluded.paused_until, paused_for = excluded.paused_for
        """)

    func putOffer(_ offer: Offer) async throws {
        try await rows(
            Self.putOfferSQL,
            [
                .text(offer.provider.rawValue), .integer(offer.price.micro), .int(offer.slots),
                .text(OfferModels.models(offer.models)), .real(offer.minRequesterReputation),
                .integer(offer.createdMs), .optional(offer.maxWorkspaceBytes), .optional(offer.maxWorkspaceFiles),
                .optional(offer.pausedUntilMs), .optional(offer.pausedFor),
            ])
    }

    static let deleteOfferSQL = SQL("DELETE FROM offers WHERE provider = $1 RETURNING 1")

    func deleteOffer(of provider: PeerID) async throws -> Bool {
        try await !rows(Self.deleteOfferSQL, [.text(provider.rawValue)]).isEmpty
    }

    static let busySlotsSQL = SQL(
        "SELECT count(*) FROM tasks WHERE provider = $1 AND state IN ('assigned', 'running')")

    func busySlots(of provider: PeerID) async throws -> Int {
        try await one(Self.busySlotsSQL, [.text(provider.rawValue)])?.int(0) ?? 0
    }

    /// Two writes in one step: one round trip on PostgreSQL (`SQL.Pair`), two statements on SQLite;
    /// without values for the second, the first alone.
    func write(_ pair: SQL.Pair, _ first: [SQLValue], _ second: [SQLValue]?) async throws {
        guard let second else {
            try await rows(pair.first, first)
            return
        }
        switch dialect {
        case .postgres:
            try await rows(pair.joined, first + second)
        case .sqlite:
            try await rows(pair.first, first)
            try await rows(pair.second, second)
        }
    }

    // MARK: Savepoints

    static let savepointSQL = SQL("SAVEPOINT step")
    static let releaseSQL = SQL("RELEASE SAVEPOINT step")
    static let rollbackToSQL = SQL("ROLLBACK TO SAVEPOINT step")

    func savepoint<T>(_ body: () async throws -> T) async throws -> T {
        try await rows(Self.savepointSQL)
        do {
            let result = try await body()
            try await rows(Self.releaseSQL)
            return result
        } catch {
            // A deadlock or a serialization failure is the whole transaction's to retry, not this
            // step's to report; and SQLite ends the whole transaction on some errors (a full disk,
            // an I/O error): either way, nothing of the transaction can commit.
            if session.failure(of: error) == .transient || !session.isInsideTransaction {
                throw TransactionAborted(error)
            }
            do {
                try await rows(Self.rollbackToSQL)
                try await rows(Self.releaseSQL)
            } catch { throw TransactionAborted(error) }
            throw error
        }
    }
}

/// An offer's models as one column: the names joined by commas.
enum OfferModels {
    static func models(_ list: [String]) -> String { list.joined(separator: ",") }
    static func models(_ text: String) -> [String] { text.split(separator: ",").map(String.init) }
}
