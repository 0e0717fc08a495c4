import Dispatch
import NIOCore
import Synchronization

/// Runs an async body to its end on the calling thread: the body's jobs are queued here and run
/// by the thread that waits for them. SQLite's transactions use it inside GRDB's synchronous
/// writer closure, where the database may only be touched by that thread: its statements are
/// async functions that never suspend, so the whole transaction runs there, in order, as a
/// synchronous closure did. A body that does suspend (it awaits an actor, say) still completes:
/// whatever resumes it is queued here and run by the waiting thread.
final class InlineTaskExecutor: TaskExecutor {
    private let jobs = Mutex<[UnownedJob]>([])
    private let ready = DispatchSemaphore(value: 0)

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        jobs.withLock { $0.append(job) }
        ready.signal()
    }

    /// `body` run to completion here; its result or its error.
    static func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let executor = InlineTaskExecutor()
        let outcome = Outcome<T>()
        Task(executorPreference: executor) {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            outcome.result.withLock { $0 = result }
            executor.ready.signal()
        }
        while true {
            executor.ready.wait()
            if let job = executor.jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
                job.runSynchronously(on: executor.asUnownedTaskExecutor())
            }
            if let result = outcome.result.withLock({ $0 }), executor.jobs.withLock({ $0.isEmpty }) {
                return try result.get()
            }
        }
    }

    private final class Outcome<T: Sendable>: Sendable {
        let result = Mutex<Result<T, any Error>?>(nil)
    }
}

/// A task executor that runs its jobs on one NIO event loop. A PostgreSQL transaction prefers
/// its connection's loop: a statement's answer arrives on that loop and the transaction goes on
/// there, with no thread woken in between.
final class EventLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
