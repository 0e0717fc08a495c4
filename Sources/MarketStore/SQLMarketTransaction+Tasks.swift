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

    static let putBlobChunkSQL = SQL(
        """
        INSERT INTO blob_chunks (task_id, blob, idx, count, sender, bytes, frame) VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (task_id, blob, idx) DO UPDATE SET count = excluded.count, sender = excluded.sender,
            bytes = excluded.bytes, frame = excluded.frame
        """)

    func putBlobChunk(_ chunk: StoredBlobChunk) async throws {
        try await rows(
            Self.putBlobChunkSQL,
            [
                .text(chunk.taskID), .text(chunk.blob), .int(chunk.index), .int(chunk.count),
                .text(chunk.sender.rawValue), .integer(chunk.bytes), .text(chunk.frame),
            ])
    }

    static let blobChunksSQL = SQL("SELECT frame FROM blob_chunks WHERE task_id = $1 AND blob = $2 ORDER BY idx")

    func blobChunks(taskID: String, blob: String) async throws -> [String] {
        try await rows(Self.blobChunksSQL, [.text(taskID), .text(blob)]).map { try $0.text(0) }
    }

    static let blobBytesSQL = SQL(
        "SELECT CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM blob_chunks WHERE task_id = $1 AND blob = $2 AND idx <> $3"
    )
    static let senderBytesSQL = SQL(
        "SELECT CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM blob_chunks WHERE sender = $1")

    func blobBytes(taskID: String, blob: String, except index: Int) async throws -> Int64 {
        try await one(Self.blobBytesSQL, [.text(taskID), .text(blob), .int(index)])?.int64(0) ?? 0
    }

    func blobBytes(sender: PeerID) async throws -> Int64 {
        try await one(Self.senderBytesSQL, [.text(sender.rawValue)])?.int64(0) ?? 0
    }

    static let deleteBlobSQL = SQL("DELETE FROM blob_chunks WHERE task_id = $1 AND blob = $2")
    static let deleteBlobsSQL = SQL("DELETE FROM blob_chunks WHERE task_id = $1")

    func deleteBlobChunks(taskID: String, blob: String?) async throws {
        if let blob {
            try await rows(Self.deleteBlobSQL, [.text(taskID), .text(blob)])
        } else {
            try await rows(Self.deleteBlobsSQL, [.text(taskID)])
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
