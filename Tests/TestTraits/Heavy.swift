import Testing

/// The tests that run the real Claude Code CLI (a 400 MB Bun binary per job, several per test)
/// take both of a CI machine's cores for seconds at a time. Beside one another they starved
/// each other and the light tests past their time limits; with `.heavy` on their suites they
/// run one test at a time (every other test still runs beside them). All test targets run in
/// one process, so one lock covers them all.
public struct HeavyTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    /// Each test (case) takes the lock; a suite does not, or its tests would wait on it.
    public func scopeProvider(for test: Test, testCase: Test.Case?) -> HeavyTrait? { testCase == nil ? nil : self }

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        await HeavyLock.shared.acquire()
        do {
            try await function()
        } catch {
            await HeavyLock.shared.release()
            throw error
        }
        await HeavyLock.shared.release()
    }
}

extension Trait where Self == HeavyTrait {
    /// Runs the test alone among `.heavy` tests.
    public static var heavy: HeavyTrait { HeavyTrait() }
}

/// A lock that waits without blocking a thread, first come first served.
actor HeavyLock {
    static let shared = HeavyLock()
    private var held = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func acquire() async {
        guard held else {
            held = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func release() {
        guard !waiting.isEmpty else {
            held = false
            return
        }
        waiting.removeFirst().resume()
    }
}
