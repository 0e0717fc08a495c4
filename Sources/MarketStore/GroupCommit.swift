import Synchronization

/// Group commit: writes from many peers applied in one durable transaction, each in a savepoint
/// of its own, so that a write that throws changes nothing and spoils nothing else.
///
/// A write waits in a queue; a drainer takes up to `maxWrites` of them, runs them in order in one
/// `store.write`, and answers each only once that transaction has committed. There are as many
/// drainers as the store runs write transactions at once (SQLite one, PostgreSQL its pool). A
/// batch takes what queued while the one before it committed (and, with `linger`, what comes
/// in that long after its first write): an idle market commits each write at once, a busy one
/// commits many at a time. When the commit fails, every write of the batch fails with its error
/// and nothing of any of them is kept; none was answered, so their senders send them again.
public final class GroupCommit: Sendable {
    public struct Limits: Sendable, Equatable {
        /// The most writes one transaction carries (1: a transaction per write).
        public var maxWrites: Int
        /// How long a batch waits for more after its first write when fewer than `maxWrites`
        /// are queued (zero: it takes what is there).
        public var linger: Duration

        public init(maxWrites: Int = 64, linger: Duration = .zero) {
            self.maxWrites = max(1, maxWrites)
            self.linger = linger
        }
    }

    /// One queued write: run inside the batch's transaction, answered after its commit.
    private final class Entry: Sendable {
        /// Runs the write; `alone`, it is the transaction's only one and needs no savepoint of its
        /// own (what it throws rolls the whole transaction back and is its answer).
        let apply: @Sendable (any MarketTransaction, _ alone: Bool) async throws -> Void
        let finish: @Sendable ((any Error)?) -> Void

        init<T: Sendable>(
            _ body: @escaping @Sendable (any MarketTransaction) async throws -> T,
            _ continuation: CheckedContinuation<T, any Error>
        ) {
            let outcome = Mutex<Result<T, any Error>?>(nil)
            apply = { tx, alone in
                if alone {
                    let value = try await body(tx)
                    outcome.withLock { $0 = .success(value) }
                } else {
                    let result: Result<T, any Error>
                    do { result = .success(try await tx.savepoint { try await body(tx) }) } catch let aborted
                        as TransactionAborted
                    {
                        throw aborted
                    } catch { result = .failure(error) }
                    outcome.withLock { $0 = result }
                }
            }
            finish = { failure in
                if let aborted = failure as? TransactionAborted {
                    return continuation.resume(throwing: aborted.underlying)
                }
                if let failure { return continuation.resume(throwing: failure) }
                // The transaction committed, so every entry of it ran.
                continuation.resume(with: outcome.withLock { $0! })
            }
        }
    }

    private struct Queue {
        var entries: [Entry] = []
        /// Batches being formed or committed now (at most the store's `writeConcurrency`).
        var drainers = 0
        /// Drainers lingering for a fuller batch, woken as soon as `maxWrites` are queued.
        var lingering: [Int: CheckedContinuation<Void, Never>] = [:]
        var lingerers = 0
    }

    private let store: any MarketStore
    public let limits: Limits
    private let queue = Mutex(Queue())
    /// Writes committed, and the transactions that carried them (for the metrics).
    private let counts = Mutex((writes: 0, transactions: 0))

    /// `limits`: the store's `groupCommitDefaults` unless the operator said otherwise.
    public init(store: any MarketStore, limits: Limits) {
        self.store = store
        self.limits = limits
    }

    /// Runs `body` in the next batch's transaction, in a savepoint of its own; returns once that
    /// transaction has committed. A `body` that throws changes nothing and its error is thrown.
    public func write<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws
        -> T
    {
        try await withCheckedThrowingContinuation { continuation in
            let entry = Entry(body, continuation)
            let (drains, full) = queue.withLock { queue in
                queue.entries.append(entry)
                var full: [CheckedContinuation<Void, Never>] = []
                if queue.entries.count >= limits.maxWrites {
                    full = Array(queue.lingering.values)
                    queue.lingering = [:]
                }
                guard queue.drainers < store.writeConcurrency else { return (false, full) }
                queue.drainers += 1
                return (true, full)
            }
            for lingering in full { lingering.resume() }
            if drains { Task { await self.drain() } }
        }
    }

    /// Writes committed and the transactions that carried them, since the start.
    public var committed: (writes: Int, transactions: Int) { counts.withLock { $0 } }

    /// Writes waiting for a batch.
    var queued: Int { queue.withLock { $0.entries.count } }

    private func drain() async {
        while true {
            if limits.linger > .zero, queue.withLock({ $0.entries.count }) < limits.maxWrites {
                await lingerUntilFull()
            }
            let batch = queue.withLock { queue -> [Entry] in
                let batch = Array(queue.entries.prefix(limits.maxWrites))
                queue.entries.removeFirst(batch.count)
                if batch.isEmpty { queue.drainers -= 1 }
                return batch
            }
            guard !batch.isEmpty else { return }
            do {
                let alone = batch.count == 1
                try await store.write { tx in
                    for entry in batch { try await entry.apply(tx, alone) }
                }
                counts.withLock {
                    $0.writes += batch.count
                    $0.transactions += 1
                }
                for entry in batch { entry.finish(nil) }
            } catch {
                // The commit failed (or the one write threw): nothing of the batch was kept.
                for entry in batch { entry.finish(error) }
            }
        }
    }

    /// Waits `linger`, or less: a batch that fills up goes at once.
    private func lingerUntilFull() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: self.limits.linger) }
            group.addTask { await self.untilFull() }
            await group.next()
            group.cancelAll()
        }
    }

    private func untilFull() async {
        let id = queue.withLock { queue in
            queue.lingerers += 1
            return queue.lingerers
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let now = queue.withLock { queue in
                    guard queue.entries.count < limits.maxWrites, !Task.isCancelled else { return true }
                    queue.lingering[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            queue.withLock { $0.lingering.removeValue(forKey: id) }?.resume()
        }
    }
}
