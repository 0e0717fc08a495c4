import Foundation
import GRDB
import MarketCore
import MarketCrypto
import Synchronization

/// The lifecycle state of a local job row.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case reserved, running, succeeded, failed, timedOut = "timed-out", cancelled, abandoned
    /// The gateway refused a request for the token budget and the job was stopped.
    case overBudget = "over_budget"
    /// The job printed more than `docker.maxOutput` and was stopped.
    case outputLimit = "output_limit"
    /// The account hit its limit during the job, which was stopped (no fault of the job's).
    case capacity

    /// States that hold a concurrency slot.
    public static let active: [JobState] = [.reserved, .running]
    public var isFinal: Bool { !Self.active.contains(self) }
}

/// An event to append to a job's log.
public struct NewJobEvent: Sendable {
    public var jobID: String
    public var stream: String
    public var kind: String
    public var line: String
    public var at: Date

    public init(jobID: String, stream: String, kind: String, line: String, at: Date) {
        self.jobID = jobID
        self.stream = stream
        self.kind = kind
        self.line = line
        self.at = at
    }
}

/// A job as recorded locally.
public struct JobRecord: Codable, Sendable, Equatable {
    public var id: String
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    public var state: JobState
    /// `local` for `execute`, `provider` for market jobs run here, `requester` for jobs posted.
    public var role: String
    public var backend: String
    public var model: String?
    public var requester: String?
    public var image: String?
    public var promptBytes: Int64
    public var estimatedTokens: Int64
    public var inputTokens: Int64
    public var outputTokens: Int64
    public var cacheReadTokens: Int64
    public var cacheCreationTokens: Int64
    public var costUSD: Double
    public var exitCode: Int64?
    public var error: String?

    init(row: Row) {
        id = row["id"]
        createdAt = Date(unixMilliseconds: row["created_ms"])
        startedAt = (row["started_ms"] as Int64?).map(Date.init(unixMilliseconds:))
        finishedAt = (row["finished_ms"] as Int64?).map(Date.init(unixMilliseconds:))
        state = JobState(rawValue: row["state"]) ?? .abandoned
        role = row["role"]
        backend = row["backend"]
        model = row["model"]
        requester = row["requester"]
        image = row["image"]
        promptBytes = row["prompt_bytes"]
        estimatedTokens = row["estimated_tokens"]
        inputTokens = row["input_tokens"]
        outputTokens = row["output_tokens"]
        cacheReadTokens = row["cache_read_tokens"]
        cacheCreationTokens = row["cache_creation_tokens"]
        costUSD = row["cost_usd"]
        exitCode = row["exit_code"]
        error = row["error"]
    }
}

/// What a job asks to reserve.
public struct JobReservation: Sendable {
    public var id: String
    public var role: String
    public var backend: String
    public var model: String?
    public var requester: String?
    public var image: String?
    public var promptBytes: Int64
    public var estimatedTokens: Int64

    public init(
        id: String, role: String, backend: String, model: String? = nil, requester: String? = nil,
        image: String? = nil, promptBytes: Int64, estimatedTokens: Int64
    ) {
        self.id = id
        self.role = role
        self.backend = backend
        self.model = model
        self.requester = requester
        self.image = image
        self.promptBytes = promptBytes
        self.estimatedTokens = estimatedTokens
    }
}

/// How a job ended, with the usage its backend reported.
public struct JobOutcome: Sendable {
    public var state: JobState
    public var inputTokens: Int64
    public var outputTokens: Int64
    public var cacheReadTokens: Int64
    public var cacheCreationTokens: Int64
    public var costUSD: Double
    public var model: String?
    public var exitCode: Int64?
    public var error: String?

    public init(
        state: JobState, inputTokens: Int64 = 0, outputTokens: Int64 = 0, cacheReadTokens: Int64 = 0,
        cacheCreationTokens: Int64 = 0, costUSD: Double = 0, model: String? = nil, exitCode: Int64? = nil,
        error: String? = nil
    ) {
        self.state = state
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
        self.cacheReadTokens = cacheReadTokens
        self.cacheCreationTokens = cacheCreationTokens
        self.costUSD = costUSD
        self.model = model
        self.exitCode = exitCode
        self.error = error
    }
}

/// One line of a job's event log.
public struct JobEvent: Codable, Sendable, Equatable {
    public var id: Int64
    public var jobID: String
    public var at: Date
    public var stream: String
    public var kind: String
    public var line: String
}

/// Jobs, their events and the usage counted from them. Reservations are made under the
/// database write lock, so concurrent processes can never exceed a limit together.
public struct JobStore: Sendable {
    let database: StateDatabase
    let calendar: Calendar

    public init(database: StateDatabase, calendar: Calendar = UsagePeriod.utcCalendar) {
        self.database = database
        self.calendar = calendar
    }

    public func usage(at now: Date) throws -> UsageSnapshot {
        try database.pool.read { db in try usage(db, at: now) }
    }

    func usage(_ db: Database, at now: Date) throws -> UsageSnapshot {
        func count(_ period: UsagePeriod) throws -> PeriodUsage {
            let interval = period.interval(containing: now, calendar: calendar)
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT COUNT(*) AS tasks,
                           COALESCE(SUM(CASE WHEN state IN ('reserved', 'running') THEN estimated_tokens
                                             ELSE input_tokens + output_tokens END), 0) AS tokens
                    FROM jobs WHERE created_ms >= ? AND created_ms < ?
                    """,
                arguments: [interval.start.unixMilliseconds, interval.end.unixMilliseconds])!
            return PeriodUsage(
                period: period, start: interval.start, end: interval.end, tasks: row["tasks"], tokens: row["tokens"])
        }
        let running = try Int64.fetchOne(
            db, sql: "SELECT COUNT(*) FROM jobs WHERE state IN ('reserved', 'running')")!
        return UsageSnapshot(day: try count(.day), week: try count(.week), month: try count(.month), running: running)
    }

    /// Checks the limits and records the job as reserved, atomically. Jobs whose owning
    /// process died are released first so that a crash cannot hold a slot forever.
    public func reserve(
        _ reservation: JobReservation, limits: Limits, actor: String, at now: Date, ownerPID: Int32 = getpid()
    ) throws -> UsageSnapshot {
        let signer = try database.auditSigner()
        return try database.immediateWrite { db in
            try releaseAbandoned(db, at: now, signer: signer)
            let usage = try usage(db, at: now)
            if let violation = limits.violation(adding: reservation.estimatedTokens, to: usage) {
                throw violation
            }
            try db.execute(
                sql: """
                    INSERT INTO jobs (id, created_ms, state, role, backend, model, requester, image, prompt_bytes,
                                      estimated_tokens, owner_pid)
                    VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    reservation.id, now.unixMilliseconds, reservation.role, reservation.backend, reservation.model,
                    reservation.requester, reservation.image, reservation.promptBytes, reservation.estimatedTokens,
                    ownerPID,
                ])
            try AuditLog.append(
                db, actor: actor, kind: "job.reserved",
                details: [
                    "job": reservation.id, "backend": reservation.backend,
                    "estimatedTokens": String(reservation.estimatedTokens),
                    "promptBytes": String(reservation.promptBytes),
                ], at: now, signer: signer)
            return usage
        }
    }

    public func markRunning(_ id: String, actor: String, at now: Date, details: [String: String] = [:]) throws {
        let signer = try database.auditSigner()
        return try database.immediateWrite { db in
            try db.execute(
                sql: "UPDATE jobs SET state = 'running', started_ms = ? WHERE id = ? AND state = 'reserved'",
                arguments: [now.unixMilliseconds, id])
            try AuditLog.append(
                db, actor: actor, kind: "job.started", details: details.merging(["job": id]) { $1 }, at: now,
                signer: signer)
        }
    }

    public func finish(_ id: String, outcome: JobOutcome, actor: String, at now: Date) throws {
        let signer = try database.auditSigner()
        return try database.immediateWrite { db in
            try db.execute(
                sql: """
                    UPDATE jobs SET state = ?, finished_ms = ?, input_tokens = ?, output_tokens = ?,
                        cache_read_tokens = ?, cache_creation_tokens = ?, cost_usd = ?, exit_code = ?, error = ?,
                        model = COALESCE(?, model)
                    WHERE id = ?
                    """,
                arguments: [
                    outcome.state.rawValue, now.unixMilliseconds, outcome.inputTokens, outcome.outputTokens,
                    outcome.cacheReadTokens, outcome.cacheCreationTokens, outcome.costUSD, outcome.exitCode,
                    outcome.error, outcome.model, id,
                ])
            var details = [
                "job": id, "state": outcome.state.rawValue, "inputTokens": String(outcome.inputTokens),
                "outputTokens": String(outcome.outputTokens),
            ]
            if let error = outcome.error { details["error"] = error }
            if let exitCode = outcome.exitCode { details["exitCode"] = String(exitCode) }
            try AuditLog.append(db, actor: actor, kind: "job.finished", details: details, at: now, signer: signer)
        }
    }

    /// Marks reserved or running jobs whose owner process is gone as abandoned.
    func releaseAbandoned(_ db: Database, at now: Date, signer: PeerIdentity?) throws {
        for (id, pid) in try jobsWithDeadOwners(db) {
            try db.execute(
                sql:
                    "UPDATE jobs SET state = 'abandoned', finished_ms = ?, error = 'owner process exited' WHERE id = ?",
                arguments: [now.unixMilliseconds, id])
            try AuditLog.append(
                db, actor: "system", kind: "job.abandoned", details: ["job": id, "ownerPID": String(pid)], at: now,
                signer: signer)
        }
    }

    /// Jobs whose owning process died: their containers may still run, with nobody left to
    /// enforce the timeout or read the result. With `record`, newly found ones are marked
    /// abandoned (and audited) first; without, nothing is written.
    public func abandonedJobIDs(at now: Date, record: Bool = true) throws -> Set<String> {
        let abandoned = "SELECT id FROM jobs WHERE state = 'abandoned'"
        if record {
            let signer = try database.auditSigner()
            return try database.immediateWrite { db in
                try releaseAbandoned(db, at: now, signer: signer)
                return Set(try String.fetchAll(db, sql: abandoned))
            }
        }
        return try database.pool.read { db in
            Set(try String.fetchAll(db, sql: abandoned)).union(try jobsWithDeadOwners(db).map(\.id))
        }
    }

    /// Reserved or running jobs whose owning process is gone.
    func jobsWithDeadOwners(_ db: Database) throws -> [(id: String, pid: Int32)] {
        try Row.fetchAll(db, sql: "SELECT id, owner_pid FROM jobs WHERE state IN ('reserved', 'running')")
            .compactMap { row in
                guard let pid = row["owner_pid"] as Int32?, !Self.processIsAlive(pid) else { return nil }
                return (row["id"], pid)
            }
    }

    static func processIsAlive(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || errno == EPERM
    }

    public func appendEvent(jobID: String, stream: String, kind: String, line: String, at now: Date) throws {
        try appendEvents([NewJobEvent(jobID: jobID, stream: stream, kind: kind, line: line, at: now)])
    }

    /// Many events in one transaction: a job's output is written in batches, not a transaction
    /// per line.
    public func appendEvents(_ events: [NewJobEvent]) throws {
        guard !events.isEmpty else { return }
        // Rows go in groups of 64 per statement: SQLite's cost is mostly per statement.
        let group = 64
        try database.pool.write { db in
            let many = try db.cachedStatement(
                sql: "INSERT INTO job_events (job_id, at_ms, stream, kind, line) VALUES "
                    + Array(repeating: "(?, ?, ?, ?, ?)", count: group).joined(separator: ", "))
            let one = try db.cachedStatement(
                sql: "INSERT INTO job_events (job_id, at_ms, stream, kind, line) VALUES (?, ?, ?, ?, ?)")
            var index = 0
            while index < events.count {
                let slice = events[index..<min(events.count, index + group)]
                index += group
                guard slice.count == group else {
                    // The last, shorter group: one row at a time.
                    for event in slice {
                        try one.execute(
                            arguments: [event.jobID, event.at.unixMilliseconds, event.stream, event.kind, event.line])
                    }
                    continue
                }
                var values: [(any DatabaseValueConvertible)?] = []
                values.reserveCapacity(group * 5)
                for event in slice {
                    values += [event.jobID, event.at.unixMilliseconds, event.stream, event.kind, event.line]
                }
                try many.execute(arguments: StatementArguments(values))
            }
        }
    }

    /// Events after `afterID`, oldest first; `jobID` nil for every job.
    public func events(jobID: String?, afterID: Int64 = 0, limit: Int = 10_000) throws -> [JobEvent] {
        try database.pool.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM job_events WHERE id > ? AND (? IS NULL OR job_id = ?) ORDER BY id LIMIT ?
                    """,
                arguments: [afterID, jobID, jobID, limit])
            return rows.map {
                JobEvent(
                    id: $0["id"], jobID: $0["job_id"], at: Date(unixMilliseconds: $0["at_ms"]), stream: $0["stream"],
                    kind: $0["kind"], line: $0["line"])
            }
        }
    }

    /// The last `count` events (of one job, or all), oldest first.
    public func lastEvents(jobID: String?, count: Int) throws -> [JobEvent] {
        let lastID = try database.pool.read { db in
            try Int64.fetchOne(
                db,
                sql: """
                    SELECT id FROM job_events WHERE (? IS NULL OR job_id = ?) ORDER BY id DESC LIMIT 1 OFFSET ?
                    """,
                arguments: [jobID, jobID, max(count, 1) - 1])
        }
        return try events(jobID: jobID, afterID: (lastID ?? 1) - 1)
    }

    public func job(_ id: String) throws -> JobRecord? {
        try database.pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(JobRecord.init(row:))
        }
    }

    public func jobs(from start: Date? = nil, until end: Date? = nil) throws -> [JobRecord] {
        try database.pool.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT * FROM jobs WHERE created_ms >= ? AND created_ms < ? ORDER BY created_ms",
                arguments: [start?.unixMilliseconds ?? Int64.min, end?.unixMilliseconds ?? Int64.max]
            ).map(JobRecord.init(row:))
        }
    }

    public func latestJobID() throws -> String? {
        try database.pool.read { db in
            try String.fetchOne(db, sql: "SELECT id FROM jobs ORDER BY created_ms DESC, rowid DESC LIMIT 1")
        }
    }
}

extension JobStore {
    /// Records a rate-limit notice (five-hour / weekly window) from a job's stream.
    public func recordRateLimit(jobID: String, window: String, status: String, resetsAt: Date?, at now: Date) throws {
        try database.pool.write { db in
            try db.execute(
                sql:
                    "INSERT INTO rate_limit_events (job_id, at_ms, window, status, resets_at_ms) VALUES (?, ?, ?, ?, ?)",
                arguments: [jobID, now.unixMilliseconds, window, status, resetsAt?.unixMilliseconds])
        }
    }

    /// The latest notice per window.
    public func latestRateLimits() throws -> [RateLimitStatus] {
        try database.pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT window, status, at_ms, resets_at_ms FROM rate_limit_events r
                    WHERE id = (SELECT MAX(id) FROM rate_limit_events WHERE window = r.window) ORDER BY window
                    """
            ).map {
                RateLimitStatus(
                    window: $0["window"], status: $0["status"], at: Date(unixMilliseconds: $0["at_ms"]),
                    resetsAt: ($0["resets_at_ms"] as Int64?).map(Date.init(unixMilliseconds:)))
            }
        }
    }
}

public struct RateLimitStatus: Codable, Sendable, Equatable {
    public var window: String
    public var status: String
    public var at: Date
    public var resetsAt: Date?
}

/// Writes a job's log lines off the output path: lines are batched (`batchLines` per
/// transaction) and written on a queue of their own, so that reading the job's output never
/// waits on SQLite. Memory stays flat: past `maxPending` unwritten lines the caller writes a
/// batch itself.
public final class JobEventWriter: Sendable {
    let jobs: JobStore
    private let queue = DispatchQueue(label: "claude-max-market.job-events")
    private let pending = Mutex<[NewJobEvent]>([])
    public static let batchLines = 256
    static let maxPending = 16_384

    public init(jobs: JobStore) { self.jobs = jobs }

    public func append(_ event: NewJobEvent) {
        let count = pending.withLock {
            $0.append(event)
            return $0.count
        }
        if count >= Self.maxPending {
            flush()
        } else if count % Self.batchLines == 0 {
            flushSoon()
        }
    }

    /// Writes what is waiting, on the writer's queue.
    public func flushSoon() { queue.async { self.flush() } }

    /// Writes what is waiting now (from the timer, or at the end).
    public func flush() {
        let events = pending.withLock { pending in
            let taken = pending
            pending.removeAll(keepingCapacity: true)
            return taken
        }
        try? jobs.appendEvents(events)
    }

    /// Writes everything and returns once it is written.
    public func finish() async {
        await withCheckedContinuation { continuation in
            queue.async {
                self.flush()
                continuation.resume()
            }
        }
    }
}
