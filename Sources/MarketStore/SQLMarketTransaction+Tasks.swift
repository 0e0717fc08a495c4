import MarketCore

extension SQLMarketTransaction {
    // MARK: Tasks

    static let taskSQL = SQL(TaskRow.selectSQL + " WHERE id = $1")
    static let lockedTaskSQL = SQL.locking(TaskRow.selectSQL + " WHERE id = $1")

    func task(_ id: String, lock: Bool) async throws -> MarketTask? {
        try await one(lock ? Self.lockedTaskSQL : Self.taskSQL, [.text(id)]).map(TaskRow.task)
    }

    static let insertEnteringSQL = SQL.Pair(TaskRow.insertSQL, then: insertTaskEventSQL)
    static let updateEnteringSQL = SQL.Pair(TaskRow.updateSQL, then: insertTaskEventSQL)

    func insertTask(_ task: MarketTask, entering event: TaskEventRecord?) async throws {
        do {
            try await write(Self.insertEnteringSQL, TaskRow.values(of: task), event.map(Self.values))
        } catch  where session.failure(of: error) == .duplicate {
            throw MarketError(.duplicateTask, "task \(task.id) already exists: choose a new taskId")
        }
    }

    func updateTask(_ task: MarketTask, entering event: TaskEventRecord?) async throws {
        try await write(Self.updateEnteringSQL, TaskRow.updateValues(of: task), event.map(Self.values))
    }

    static let tasksInStateSQL = SQL(TaskRow.selectSQL + " WHERE state = $1 ORDER BY created LIMIT $2")
    static let newestTasksSQL = SQL(TaskRow.selectSQL + " ORDER BY created DESC LIMIT $1")

    func tasks(state: TaskState?, limit: Int) async throws -> [MarketTask] {
        let limit = SQLValue.int(min(limit, Int(Int32.max)))
        guard let state else { return try await rows(Self.newestTasksSQL, [limit]).map(TaskRow.task) }
        return try await rows(Self.tasksInStateSQL, [.text(state.rawValue), limit]).map(TaskRow.task)
    }

    /// One statement per number of states asked for (there are few states): `state IN ($2, …)`.
    static let tasksOfPeerSQL: [SQL] = (0...TaskState.allCases.count).map { count in
        let marks = (0..<count).map { "$\($0 + 2)" }.joined(separator: ", ")
        return SQL(
            TaskRow.selectSQL + " WHERE (provider = $1 OR requester = $1) AND state IN (\(marks)) ORDER BY created")
    }

    func tasks(of peer: PeerID, states: [TaskState]) async throws -> [MarketTask] {
        let states = Array(Set(states)).sorted { $0.rawValue < $1.rawValue }
        guard !states.isEmpty else { return [] }
        return try await rows(
            Self.tasksOfPeerSQL[states.count], [.text(peer.rawValue)] + states.map { .text($0.rawValue) }
        ).map(TaskRow.task)
    }

    static let tasksDueSQL = SQL(
        "SELECT id FROM tasks WHERE deadline IS NOT NULL AND deadline <= $1 ORDER BY deadline LIMIT $2")

    func tasksDue(nowMs: Int64, limit: Int) async throws -> [String] {
        try await rows(Self.tasksDueSQL, [.integer(nowMs), .int(limit)]).map { try $0.text(0) }
    }

    static let setFrameSQL: [TaskFrameKind: SQL] = [
        .payload: SQL("UPDATE tasks SET payload = $1 WHERE id = $2"),
        .result: SQL("UPDATE tasks SET result = $1 WHERE id = $2"),
    ]
    static let frameSQL: [TaskFrameKind: SQL] = [
        .payload: SQL("SELECT payload FROM tasks WHERE id = $1"),
        .result: SQL("SELECT result FROM tasks WHERE id = $1"),
    ]

    func setFrame(taskID: String, kind: TaskFrameKind, frame: String?) async throws {
        try await rows(Self.setFrameSQL[kind]!, [.optional(frame), .text(taskID)])
    }

    func frame(taskID: String, kind: TaskFrameKind) async throws -> String? {
        try await one(Self.frameSQL[kind]!, [.text(taskID)])?.optionalText(0)
    }

    // MARK: Sealed workspaces and patches

    /// The piece and its bytes on the counts: its blob's row and the market's (`''`, `''`), in
    /// one round trip on PostgreSQL. A second piece under the same index fails the primary key.
    static let putBlobChunkSQL = SQL.Pair(
        SQL(
            """
            INSERT INTO blob_chunks (task_id, blob, idx, count, sender, bytes, frame)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """),
        then: addPieceBytesSQL)
    static let addPieceBytesSQL = SQL(
        """
        INSERT INTO piece_bytes (task_id, blob, bytes) VALUES ($1, $2, $3), ('', '', $3)
        ON CONFLICT (task_id, blob) DO UPDATE SET bytes = piece_bytes.bytes + excluded.bytes
        """)

    func putBlobChunk(_ chunk: StoredBlobChunk) async throws {
        try await write(
            Self.putBlobChunkSQL,
            [
                .text(chunk.taskID), .text(chunk.blob), .int(chunk.index), .int(chunk.count),
                .text(chunk.sender.rawValue), .integer(chunk.bytes), .text(chunk.frame),
            ],
            [.text(chunk.taskID), .text(chunk.blob), .integer(chunk.bytes)])
    }

    static let blobChunksSQL = SQL("SELECT frame FROM blob_chunks WHERE task_id = $1 AND blob = $2 ORDER BY idx")

    func blobChunks(taskID: String, blob: String) async throws -> [String] {
        try await rows(Self.blobChunksSQL, [.text(taskID), .text(blob)]).map { try $0.text(0) }
    }

    static let blobChunkSQL = SQL(
        "SELECT count, sender, bytes, frame FROM blob_chunks WHERE task_id = $1 AND blob = $2 AND idx = $3")

    func blobChunk(taskID: String, blob: String, index: Int) async throws -> StoredBlobChunk? {
        guard let row = try await one(Self.blobChunkSQL, [.text(taskID), .text(blob), .int(index)]) else { return nil }
        let sender = try row.text(1)
        guard let peer = try? PeerID(validating: sender) else {
            throw MarketError(
                .internalError, "a piece of task \(taskID) is stored under a malformed peer id '\(sender)'")
        }
        return StoredBlobChunk(
            taskID: taskID, blob: blob, index: index, count: try row.int(0), sender: peer, bytes: try row.int64(2),
            frame: try row.text(3))
    }

    static let pieceBytesText =
        "SELECT task_id, blob, bytes FROM piece_bytes WHERE task_id = $1 OR (task_id = '' AND blob = '')"
    static let pieceBytesSQL = SQL(pieceBytesText)
    static let lockedPieceBytesSQL = SQL.locking(pieceBytesText)

    func pieceBytes(taskID: String, lock: Bool) async throws -> StoredPieceBytes {
        var bytes = StoredPieceBytes(blobs: [:], total: 0)
        for row in try await rows(lock ? Self.lockedPieceBytesSQL : Self.pieceBytesSQL, [.text(taskID)]) {
            if try row.text(0).isEmpty {
                bytes.total = try row.int64(2)
            } else {
                bytes.blobs[try row.text(1)] = try row.int64(2)
            }
        }
        return bytes
    }

    /// PostgreSQL: the blob's counts, its pieces and its bytes off the market's count in one
    /// statement; the market's row is written (and locked) only when there was something to
    /// take off. `$2` is the blob, or `''` for all of the task's. SQLite, which has no writing
    /// CTEs, takes the same three steps one by one.
    static let deleteBlobsSQL = SQL(
        postgres: """
            WITH gone AS (DELETE FROM piece_bytes WHERE task_id = $1 AND ($2 = '' OR blob = $2) RETURNING bytes),
                pieces AS (DELETE FROM blob_chunks WHERE task_id = $1 AND ($2 = '' OR blob = $2))
            UPDATE piece_bytes SET bytes = bytes - CAST((SELECT sum(bytes) FROM gone) AS BIGINT)
            WHERE task_id = '' AND blob = '' AND EXISTS (SELECT 1 FROM gone)
            """,
        sqlite: "")
    static let deleteBlobCountsSQL = SQL(
        "DELETE FROM piece_bytes WHERE task_id = $1 AND ($2 = '' OR blob = $2) RETURNING bytes")
    static let subtractPieceBytesSQL = SQL("UPDATE piece_bytes SET bytes = bytes - $1 WHERE task_id = '' AND blob = ''")
    static let deleteBlobPiecesSQL = SQL("DELETE FROM blob_chunks WHERE task_id = $1 AND ($2 = '' OR blob = $2)")

    func deleteBlobChunks(taskID: String, blob: String?) async throws {
        let values: [SQLValue] = [.text(taskID), .text(blob ?? "")]
        switch dialect {
        case .postgres:
            try await rows(Self.deleteBlobsSQL, values)
        case .sqlite:
            // A blob's pieces and its count are written together: no count, no pieces.
            let counts = try await rows(Self.deleteBlobCountsSQL, values)
            guard !counts.isEmpty else { return }
            let gone = try counts.reduce(Int64(0)) { $0 + (try $1.int64(0)) }
            try await rows(Self.subtractPieceBytesSQL, [.integer(gone)])
            try await rows(Self.deleteBlobPiecesSQL, values)
        }
    }

    static let taskCountsSQL = SQL("SELECT state, count(*) FROM tasks GROUP BY state")

    func taskCounts() async throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for row in try await rows(Self.taskCountsSQL) { counts[try row.text(0)] = try row.int(1) }
        return counts
    }

    static let settledVolumeSQL = SQL(
        "SELECT CAST(coalesce(sum(price), 0) AS BIGINT) FROM tasks WHERE state = 'settled'")

    func settledVolume() async throws -> Int64 {
        try await one(Self.settledVolumeSQL)?.int64(0) ?? 0
    }

    // MARK: Reputation history

    static let insertOutcomeSQL = SQL(
        "INSERT INTO outcomes (peer, task_id, role, success, at) VALUES ($1, $2, $3, $4, $5)")

    static func values(of outcome: ReputationOutcome, nowMs: Int64) -> [SQLValue] {
        [
            .text(outcome.peer.rawValue), .text(outcome.taskID), .text(outcome.role), .boolean(outcome.success),
            .integer(nowMs),
        ]
    }

    func insertOutcome(_ outcome: ReputationOutcome, nowMs: Int64) async throws {
        try await rows(Self.insertOutcomeSQL, Self.values(of: outcome, nowMs: nowMs))
    }

    static let recordOutcomeSQL = SQL.Pair(insertOutcomeSQL, then: updateStandingSQL)

    func recordOutcome(_ outcome: ReputationOutcome, nowMs: Int64, reputation: Reputation, settledJobs: Int)
        async throws
    {
        try await write(
            Self.recordOutcomeSQL, Self.values(of: outcome, nowMs: nowMs),
            Self.standingValues(outcome.peer, reputation: reputation, settledJobs: settledJobs))
    }

    static let outcomesSQL = SQL(
        "SELECT task_id, role, success, at FROM outcomes WHERE peer = $1 ORDER BY id DESC LIMIT $2")

    func outcomes(of peer: PeerID, limit: Int) async throws -> [(outcome: ReputationOutcome, atMs: Int64)] {
        try await rows(Self.outcomesSQL, [.text(peer.rawValue), .int(limit)]).map { row in
            (
                ReputationOutcome(peer: peer, success: try row.bool(2), taskID: try row.text(0), role: try row.text(1)),
                try row.int64(3)
            )
        }
    }

    static let providerOutcomeCountsSQL = SQL(
        """
        SELECT peer, CAST(SUM(CASE WHEN success THEN 1 ELSE 0 END) AS BIGINT),
            CAST(SUM(CASE WHEN success THEN 0 ELSE 1 END) AS BIGINT)
        FROM outcomes WHERE role = 'provider' GROUP BY peer
        """)

    func providerOutcomeCounts() async throws -> [(peer: PeerID, successes: Int, failures: Int)] {
        try await rows(Self.providerOutcomeCountsSQL).compactMap { row in
            guard let peer = try? PeerID(validating: try row.text(0)) else { return nil }
            return (peer, try row.int(1), try row.int(2))
        }
    }

    // MARK: Flow history

    static let insertTaskEventSQL = SQL(
        "INSERT INTO task_events (task_id, state, at, created, price) VALUES ($1, $2, $3, $4, $5)")

    static func values(of event: TaskEventRecord) -> [SQLValue] {
        [
            .text(event.taskID), .text(event.state.rawValue), .integer(event.atMs), .integer(event.createdMs),
            .optional(event.price),
        ]
    }

    func insertTaskEvent(_ event: TaskEventRecord) async throws {
        try await rows(Self.insertTaskEventSQL, Self.values(of: event))
    }

    static let taskEventsSQL = SQL(
        "SELECT task_id, state, at, created, price FROM task_events WHERE at >= $1 ORDER BY at, id")

    func taskEvents(sinceMs: Int64) async throws -> [TaskEventRecord] {
        try await rows(Self.taskEventsSQL, [.integer(sinceMs)]).compactMap { row in
            guard let state = TaskState(rawValue: try row.text(1)) else { return nil }
            return TaskEventRecord(
                taskID: try row.text(0), state: state, atMs: try row.int64(2), createdMs: try row.int64(3),
                price: try row.optionalInt64(4))
        }
    }
}
