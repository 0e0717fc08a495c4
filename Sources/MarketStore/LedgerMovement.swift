import MarketCore

/// One ledger movement as the books write it, the same on both databases: the debit happens
/// only when the account holds the amount (the mint may go below zero) and neither balance
/// would overflow; the credit and the ledger row only when the debit did. Balances change by
/// increments, never by a value read before, so concurrent movements on one account add up.
///
/// PostgreSQL runs it as one statement (one round trip, the debit taking the account's row
/// lock); SQLite, which has no writing CTEs and a single writer, as three.
struct LedgerMovement {
    let movement: Movement
    let values: [SQLValue]

    init(_ movement: Movement, nowMs: Int64) {
        self.movement = movement
        let amount = movement.amount.micro
        values = [
            .text(movement.from.description),  // $1
            .text(movement.to.description),  // $2
            .integer(amount),  // $3
            .integer(Int64.max - max(amount, 0)),  // $4: the most an account may hold before a credit
            .integer(Int64.min + max(amount, 0)),  // $5: the least the mint may hold before a debit
            .integer(nowMs),  // $6
            .text(movement.kind.rawValue),  // $7
            .optional(movement.taskID),  // $8
            .optional(movement.memo),  // $9
        ]
    }

    /// The debit: an upsert for the mint (its row may not exist yet, and it may go negative), an
    /// UPDATE for any other account (PostgreSQL checks a proposed row against the CHECK before
    /// ON CONFLICT, so an upsert of −amount would be refused).
    static let mintDebit = """
        INSERT INTO accounts (name, balance) VALUES ($1, 0 - $3)
        ON CONFLICT (name) DO UPDATE SET balance = accounts.balance + excluded.balance WHERE accounts.balance >= $5
        RETURNING 1
        """
    static let accountDebit = "UPDATE accounts SET balance = balance - $3 WHERE name = $1 AND balance >= $3 RETURNING 1"
    static let credit = """
        ON CONFLICT (name) DO UPDATE SET balance = accounts.balance + excluded.balance WHERE accounts.balance <= $4
        RETURNING 1
        """
    static let entry = "INSERT INTO ledger (at, debit, credit, amount, kind, task_id, memo)"

    /// PostgreSQL: the three steps in one statement; it answers how many rows the debit and the
    /// credit changed.
    static let postgres = [mintDebit, accountDebit].map { debit in
        SQL(
            """
            WITH debit AS (\(debit)),
            credit AS (INSERT INTO accounts (name, balance) SELECT $2, $3 FROM debit \(credit)),
            entry AS (\(entry) SELECT $6, $1, $2, $3, $7, $8, $9 FROM credit RETURNING 1)
            SELECT (SELECT count(*) FROM debit), (SELECT count(*) FROM credit)
            """)
    }
    /// SQLite: each step alone, bound with the values up to the highest it names (what SQLite
    /// counts as a statement's parameters).
    static let sqliteDebit = [(SQL(mintDebit), 5), (SQL(accountDebit), 3)]
    static let sqliteCredit = SQL("INSERT INTO accounts (name, balance) VALUES ($2, $3) \(credit)")
    static let sqliteEntry = SQL("\(entry) VALUES ($6, $1, $2, $3, $7, $8, $9)")

    func apply(in tx: SQLMarketTransaction) async throws {
        guard movement.amount.micro > 0 else {
            throw MarketError(.invalidAmount, "a ledger movement must be positive, not \(movement.amount)")
        }
        guard movement.from != movement.to else {
            throw MarketError(.invalidAmount, "a ledger movement must go from one account to another")
        }
        let which = movement.from.mayGoNegative ? 0 : 1
        let (debited, credited): (Bool, Bool)
        switch tx.dialect {
        case .postgres:
            let row = try await tx.one(Self.postgres[which], values)
            (debited, credited) = (try row?.int64(0) == 1, try row?.int64(1) == 1)
        case .sqlite:
            let (debit, count) = Self.sqliteDebit[which]
            debited = try await !tx.rows(debit, Array(values.prefix(count))).isEmpty
            credited = debited ? try await !tx.rows(Self.sqliteCredit, Array(values.prefix(4))).isEmpty : false
            if credited { try await tx.rows(Self.sqliteEntry, values) }
        }
        if debited, credited { return }
        // Nothing is kept: the caller's transaction or savepoint undoes a debit without its credit.
        if debited || movement.from.mayGoNegative {
            throw MarketError(.invalidAmount, "moving \(movement.amount) overflows an account")
        }
        let held = try await tx.balance(movement.from)
        throw MarketError(.insufficientFunds, "\(movement.from) holds \(held), less than \(movement.amount)")
    }
}
