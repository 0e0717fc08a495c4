import MarketCore

/// A task as a row: one column per field, so that neither backend reads or writes a JSON
/// document per task. `values(of:)` binds a task in `columns`' order and `task(_:)` reads a row
/// of `selectSQL` back.
enum TaskRow {
    /// The columns, in the order of `values(of:)` and of `Fields`.
    static let columns = [
        "id", "requester", "max_price", "cap", "min_reputation", "model", "timeout_seconds", "state", "provider",
        "price", "created", "updated", "deadline", "rejections", "faults", "excluded", "result_hash", "reason",
        "dispute", "ws_bytes", "ws_files", "ws_archive_bytes", "conversation_bytes",
    ]
    /// `id, requester, …` for a SELECT or an INSERT.
    static let list = columns.joined(separator: ", ")
    /// Every column of the task, for a WHERE to follow.
    static let selectSQL = "SELECT \(list) FROM tasks"

    /// The row of `task`, in `columns`' order.
    static func values(of task: MarketTask) -> [SQLValue] {
        [
            .text(task.id), .text(task.requester.rawValue), .integer(task.maxPrice.micro), .integer(task.cap.micro),
            .real(task.minReputation), .optional(task.model), .integer(task.timeoutSeconds), .text(task.state.rawValue),
            .optional(task.provider?.rawValue), .optional(task.price?.micro), .integer(task.createdMs),
            .integer(task.updatedMs), .optional(task.deadlineMs), .integer(Int64(task.rejections)),
            .integer(Int64(task.faults)), .text(excluded(task.excluded)), .optional(task.resultHash),
            .optional(task.reason), .optional(task.dispute), .optional(task.workspaceBytes),
            .optional(task.workspaceFiles), .optional(task.workspaceArchiveBytes), .optional(task.conversationBytes),
        ]
    }

    /// The fields of a row as read, in `columns`' order.
    typealias Fields = (
        id: String, requester: String, maxPrice: Int64, cap: Int64, minReputation: Double, model: String?,
        timeoutSeconds: Int64, state: String, provider: String?, price: Int64?, created: Int64, updated: Int64,
        deadline: Int64?, rejections: Int64, faults: Int64, excluded: String, resultHash: String?, reason: String?,
        dispute: String?, workspaceBytes: Int64?, workspaceFiles: Int64?, workspaceArchiveBytes: Int64?,
        conversationBytes: Int64?
    )

    /// The task a row holds; a row no market wrote (an unknown state, a malformed peer id) is an
    /// error that names the task, not a task with a guessed field.
    static func task(_ fields: Fields) throws -> MarketTask {
        guard let state = TaskState(rawValue: fields.state) else {
            throw MarketError(.internalError, "task \(fields.id) is stored in an unknown state '\(fields.state)'")
        }
        do {
            var task = MarketTask(
                id: fields.id, requester: try PeerID(validating: fields.requester),
                maxPrice: Credits(micro: fields.maxPrice), minReputation: fields.minReputation, model: fields.model,
                timeoutSeconds: fields.timeoutSeconds, createdMs: fields.created, deadlineMs: 0)
            task.cap = Credits(micro: fields.cap)
            task.state = state
            task.provider = try fields.provider.map { try PeerID(validating: $0) }
            task.price = fields.price.map(Credits.init(micro:))
            task.updatedMs = fields.updated
            task.deadlineMs = fields.deadline
            task.rejections = Int(fields.rejections)
            task.faults = Int(fields.faults)
            task.excluded = try excluded(fields.excluded)
            task.resultHash = fields.resultHash
            task.reason = fields.reason
            task.dispute = fields.dispute
            task.workspaceBytes = fields.workspaceBytes
            task.workspaceFiles = fields.workspaceFiles
            task.workspaceArchiveBytes = fields.workspaceArchiveBytes
            task.conversationBytes = fields.conversationBytes
            return task
        } catch let error as PeerIDError {
            throw MarketError(.internalError, "task \(fields.id) holds a malformed peer id: \(error)")
        }
    }

    /// Providers a task excludes, as one column: peer ids joined by commas (a peer id is base32).
    static func excluded(_ peers: [PeerID]) -> String { peers.map(\.rawValue).joined(separator: ",") }

    static func excluded(_ text: String) throws(PeerIDError) -> [PeerID] {
        var peers: [PeerID] = []
        for part in text.split(separator: ",") { peers.append(try PeerID(validating: String(part))) }
        return peers
    }

    /// `UPDATE tasks SET requester = $1, … WHERE id = $23`: every column but the id, then the id.
    static let updateSQL: SQL = {
        let sets = columns.dropFirst().enumerated().map { "\($0.element) = $\($0.offset + 1)" }
        return SQL("UPDATE tasks SET \(sets.joined(separator: ", ")) WHERE id = $\(columns.count)")
    }()

    static let insertSQL = SQL(
        "INSERT INTO tasks (\(list)) VALUES (\((1...columns.count).map { "$\($0)" }.joined(separator: ", ")))")

    /// The task of a row selected with `selectSQL`.
    static func task(_ row: SQLRow) throws -> MarketTask {
        try task(
            (
                try row.text(0), try row.text(1), try row.int64(2), try row.int64(3), try row.double(4),
                try row.optionalText(5), try row.int64(6), try row.text(7), try row.optionalText(8),
                try row.optionalInt64(9), try row.int64(10), try row.int64(11), try row.optionalInt64(12),
                try row.int64(13), try row.int64(14), try row.text(15), try row.optionalText(16),
                try row.optionalText(17), try row.optionalText(18), try row.optionalInt64(19),
                try row.optionalInt64(20), try row.optionalInt64(21), try row.optionalInt64(22)
            ))
    }

    /// The values `update` binds: every column but the id, then the id.
    static func updateValues(of task: MarketTask) -> [SQLValue] {
        let values = values(of: task)
        return Array(values.dropFirst()) + [values[0]]
    }
}
