/// An account of the double-entry ledger. Every credit that exists is in exactly one account;
/// `mint` is the source of all of them and the only account that goes negative.
public enum Account: Hashable, Sendable, CustomStringConvertible, Codable {
    case mint
    case market
    case peer(PeerID)
    case escrow(taskID: String)
    case held(PeerID)

    public var description: String {
        switch self {
        case .mint: "mint"
        case .market: "market"
        case .peer(let peer): "peer:\(peer)"
        case .escrow(let task): "escrow:\(task)"
        case .held(let peer): "held:\(peer)"
        }
    }

    public init?(_ text: String) {
        if text == "mint" {
            self = .mint
        } else if text == "market" {
            self = .market
        } else if text.hasPrefix("peer:"), let peer = try? PeerID(validating: String(text.dropFirst(5))) {
            self = .peer(peer)
        } else if text.hasPrefix("held:"), let peer = try? PeerID(validating: String(text.dropFirst(5))) {
            self = .held(peer)
        } else if text.hasPrefix("escrow:"), text.count > 7 {
            self = .escrow(taskID: String(text.dropFirst(7)))
        } else {
            return nil
        }
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let account = Account(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad account"))
        }
        self = account
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// Only the mint may go below zero.
    public var mayGoNegative: Bool { self == .mint }
}

/// Why credits moved.
public enum MovementKind: String, Codable, Sendable, CaseIterable {
    /// Operator credit: mint → peer.
    case mint
    /// `task.post`: requester → escrow.
    case escrowLock = "escrow_lock"
    /// At settlement, what the escrow holds above the price (`cap − price`): escrow → requester.
    /// (Books from before the escrow stayed whole have these rows at assignment.)
    case differenceRefund = "difference_refund"
    /// At settlement, the provider's share: escrow → provider.
    case release
    /// At settlement, the market's fee: escrow → market.
    case fee
    /// At settlement, the new provider's held-back share: escrow → held.
    case holdback
    /// When a provider leaves the new tier: held → provider.
    case holdbackRelease = "holdback_release"
    /// Cancellation, failure, timeout: escrow → requester.
    case refund
}

/// One row of the ledger: both sides and one positive amount.
public struct Movement: Sendable, Equatable, Codable {
    public var from: Account
    public var to: Account
    public var amount: Credits
    public var kind: MovementKind
    public var taskID: String?
    public var memo: String?

    public init(
        from: Account, to: Account, amount: Credits, kind: MovementKind, taskID: String? = nil, memo: String? = nil
    ) {
        self.from = from
        self.to = to
        self.amount = amount
        self.kind = kind
        self.taskID = taskID
        self.memo = memo
    }
}

/// What `market verify` checks, computed from rows the store hands over.
public struct LedgerAudit: Sendable, Codable, Equatable {
    public struct Discrepancy: Sendable, Codable, Equatable {
        public var kind: String
        public var subject: String
        public var detail: String
    }

    public var minted: Credits
    public var accountsTotal: Credits
    public var inEscrow: Credits
    public var heldBack: Credits
    public var fees: Credits
    public var movements: Int
    public var discrepancies: [Discrepancy]
    public var balanced: Bool { discrepancies.isEmpty }

    /// - Parameters:
    ///   - movements: every ledger row as stored (id, from, to, amount).
    ///   - balances: every account's stored balance.
    ///   - finalTasks: ids of tasks in a final state.
    ///   - liveTasks: each task not in a final state, with what its books say it holds in escrow
    ///     (its `cap`): the escrow account must hold exactly that, or a settlement or refund
    ///     would move more, or less, than is there.
    public static func check(
        movements: [(id: Int64, from: String, to: String, amountMicro: Int64)],
        balances: [String: Int64],
        finalTasks: Set<String>,
        liveTasks: [String: Credits] = [:]
    ) -> LedgerAudit {
        var problems: [Discrepancy] = []
        var computed: [String: Int64] = [:]
        var overflow = false
        for row in movements {
            if row.amountMicro <= 0 {
                problems.append(
                    .init(
                        kind: "row", subject: "movement \(row.id)", detail: "amount \(row.amountMicro) is not positive")
                )
            }
            if row.from == row.to {
                problems.append(.init(kind: "row", subject: "movement \(row.id)", detail: "both sides are \(row.from)"))
            }
            if Account(row.from) == nil || Account(row.to) == nil {
                problems.append(
                    .init(
                        kind: "row", subject: "movement \(row.id)", detail: "unknown account \(row.from) or \(row.to)"))
            }
            let (debit, o1) = computed[row.from, default: 0].subtractingReportingOverflow(row.amountMicro)
            let (credit, o2) = computed[row.to, default: 0].addingReportingOverflow(row.amountMicro)
            overflow = overflow || o1 || o2
            computed[row.from] = debit
            computed[row.to] = credit
        }
        if overflow { problems.append(.init(kind: "sum", subject: "ledger", detail: "the rows overflow 64 bits")) }
        for account in Set(computed.keys).union(balances.keys).sorted() {
            let stored = balances[account] ?? 0
            let fromRows = computed[account] ?? 0
            if stored != fromRows {
                problems.append(
                    .init(
                        kind: "balance", subject: account,
                        detail:
                            "stored balance \(Credits(micro: stored)) but the ledger rows sum to \(Credits(micro: fromRows))"
                    ))
            }
            if stored < 0, Account(account)?.mayGoNegative != true {
                problems.append(
                    .init(kind: "negative", subject: account, detail: "balance \(Credits(micro: stored)) is below zero")
                )
            }
            if case .escrow(let task)? = Account(account), finalTasks.contains(task), stored != 0 {
                problems.append(
                    .init(
                        kind: "escrow", subject: account,
                        detail: "task \(task) is final but its escrow holds \(Credits(micro: stored))"))
            }
        }
        for (task, cap) in liveTasks.sorted(by: { $0.key < $1.key }) {
            let held = balances[Account.escrow(taskID: task).description] ?? 0
            if held != cap.micro {
                problems.append(
                    .init(
                        kind: "escrow", subject: Account.escrow(taskID: task).description,
                        detail: "task \(task) should hold \(cap) in escrow but holds \(Credits(micro: held))"))
            }
        }
        var total: Int64 = 0
        var escrow: Int64 = 0
        var held: Int64 = 0
        for (account, value) in balances where account != "mint" {
            total = total &+ value
            if account.hasPrefix("escrow:") { escrow = escrow &+ value }
            if account.hasPrefix("held:") { held = held &+ value }
        }
        let minted = -(balances["mint"] ?? 0)
        if total != minted {
            problems.append(
                .init(
                    kind: "sum", subject: "ledger",
                    detail: "accounts hold \(Credits(micro: total)) but \(Credits(micro: minted)) were minted"))
        }
        return LedgerAudit(
            minted: Credits(micro: minted), accountsTotal: Credits(micro: total), inEscrow: Credits(micro: escrow),
            heldBack: Credits(micro: held), fees: Credits(micro: balances["market"] ?? 0), movements: movements.count,
            discrepancies: problems)
    }
}
