import Foundation
import MarketCore
import Participant
import TestSupport
import Testing

@Suite struct LimitsTests {
    let directory = TemporaryDirectory()
    let limits = Limits(
        dailyTasks: 2, weeklyTasks: 3, monthlyTasks: 4, dailyTokens: 1000, maxTokensPerTask: 400, concurrentJobs: 1)

    func reservation(_ id: String, tokens: Int64 = 100) -> JobReservation {
        JobReservation(id: id, role: "local", backend: "command", promptBytes: 10, estimatedTokens: tokens)
    }

    func finish(_ store: JobStore, _ id: String, at date: Date, tokens: Int64 = 100) throws {
        try store.finish(
            id, outcome: JobOutcome(state: .succeeded, inputTokens: tokens / 2, outputTokens: tokens / 2), actor: "t",
            at: date)
    }

    @Test func periodsFollowCalendarBoundaries() {
        let calendar = UsagePeriod.utcCalendar
        let lastSecondOfSunday = Date.utc("2026-11-29T23:59:59Z")
        let mondayMidnight = Date.utc("2026-11-30T00:00:00Z")
        #expect(
            UsagePeriod.day.interval(containing: lastSecondOfSunday, calendar: calendar).start
                == .utc("2026-11-29T00:00:00Z"))
        #expect(
            UsagePeriod.week.interval(containing: lastSecondOfSunday, calendar: calendar).start
                == .utc("2026-11-23T00:00:00Z"))
        #expect(UsagePeriod.week.interval(containing: mondayMidnight, calendar: calendar).start == mondayMidnight)
        #expect(
            UsagePeriod.month.interval(containing: lastSecondOfSunday, calendar: calendar).end
                == .utc("2026-12-01T00:00:00Z"))
        let leap = UsagePeriod.month.interval(containing: .utc("2028-02-29T12:00:00Z"), calendar: calendar)
        #expect(leap.duration == 29 * 86_400)
    }

    @Test func tasksCountPerDayWeekAndMonth() throws {
        let store = JobStore(database: try StateDatabase(url: directory.file("s.sqlite")))
        // Saturday 28 Nov, two jobs: the daily limit is reached.
        let saturday = Date.utc("2026-11-28T10:00:00Z")
        for id in ["a", "b"] {
            _ = try store.reserve(reservation(id), limits: limits, actor: "t", at: saturday)
            try finish(store, id, at: saturday)
        }
        #expect(throws: LimitError(key: "limits.dailyTasks", limit: 2, used: 2, requested: 1)) {
            _ = try store.reserve(reservation("c"), limits: limits, actor: "t", at: saturday.addingTimeInterval(3600))
        }
        // Sunday: a new day, same week: the third job fits, the fourth hits the weekly limit.
        let sunday = Date.utc("2026-11-29T23:59:59Z")
        _ = try store.reserve(reservation("c"), limits: limits, actor: "t", at: sunday)
        try finish(store, "c", at: sunday)
        #expect(throws: LimitError(key: "limits.weeklyTasks", limit: 3, used: 3, requested: 1)) {
            _ = try store.reserve(reservation("d"), limits: limits, actor: "t", at: sunday)
        }
        // Monday 30 Nov: a new week, same month: the fourth fits, the fifth hits the monthly limit.
        let monday = Date.utc("2026-11-30T00:00:00Z")
        _ = try store.reserve(reservation("d"), limits: limits, actor: "t", at: monday)
        try finish(store, "d", at: monday)
        #expect(throws: LimitError(key: "limits.monthlyTasks", limit: 4, used: 4, requested: 1)) {
            _ = try store.reserve(reservation("e"), limits: limits, actor: "t", at: monday.addingTimeInterval(60))
        }
        // 1 December: everything resets.
        _ = try store.reserve(reservation("e"), limits: limits, actor: "t", at: .utc("2026-12-01T00:00:00Z"))
        let usage = try store.usage(at: .utc("2026-12-01T00:00:01Z"))
        #expect(usage.day.tasks == 1 && usage.week.tasks == 2 && usage.month.tasks == 1 && usage.running == 1)
    }

    @Test func tokensAndConcurrencyAreReservedBeforeTheRun() throws {
        let store = JobStore(database: try StateDatabase(url: directory.file("s.sqlite")))
        let now = Date.utc("2026-11-25T10:00:00Z")
        let wide = Limits(
            dailyTasks: 10, weeklyTasks: 10, monthlyTasks: 10, dailyTokens: 1000, maxTokensPerTask: 400,
            concurrentJobs: 2)
        #expect(throws: LimitError(key: "limits.maxTokensPerTask", limit: 400, used: 0, requested: 401)) {
            _ = try store.reserve(reservation("big", tokens: 401), limits: wide, actor: "t", at: now)
        }
        _ = try store.reserve(reservation("a", tokens: 400), limits: wide, actor: "t", at: now)
        _ = try store.reserve(reservation("b", tokens: 400), limits: wide, actor: "t", at: now)
        #expect(throws: LimitError(key: "limits.concurrentJobs", limit: 2, used: 2, requested: 1)) {
            _ = try store.reserve(reservation("c", tokens: 100), limits: wide, actor: "t", at: now)
        }
        // Job a used fewer tokens than reserved: the estimate is replaced by the actual count.
        try finish(store, "a", at: now, tokens: 100)
        #expect(try store.usage(at: now).day.tokens == 500)
        try finish(store, "b", at: now, tokens: 400)
        _ = try store.reserve(reservation("c", tokens: 400), limits: wide, actor: "t", at: now)
        #expect(throws: LimitError(key: "limits.dailyTokens", limit: 1000, used: 900, requested: 400)) {
            _ = try store.reserve(reservation("d", tokens: 400), limits: wide, actor: "t", at: now)
        }
    }

    @Test func aDeadOwnersReservationIsReleased() throws {
        let store = JobStore(database: try StateDatabase(url: directory.file("s.sqlite")))
        let now = Date.utc("2026-11-25T10:00:00Z")
        // A PID that cannot be alive: above the kernel's maximum.
        _ = try store.reserve(reservation("ghost"), limits: limits, actor: "t", at: now, ownerPID: 4_194_304 + 7)
        _ = try store.reserve(reservation("next"), limits: limits, actor: "t", at: now)
        #expect(try store.job("ghost")?.state == .abandoned)
        #expect(try store.job("next")?.state == .reserved)
    }

    @Test func violationIsPureArithmetic() {
        let start = Date.utc("2026-11-25T00:00:00Z")
        func period(_ p: UsagePeriod, tasks: Int64, tokens: Int64) -> PeriodUsage {
            PeriodUsage(period: p, start: start, end: start, tasks: tasks, tokens: tokens)
        }
        let usage = UsageSnapshot(
            day: period(.day, tasks: 1, tokens: 600), week: period(.week, tasks: 1, tokens: 600),
            month: period(.month, tasks: 1, tokens: 600), running: 0)
        #expect(limits.violation(adding: 400, to: usage) == nil)
        #expect(limits.violation(adding: 401, to: usage)?.key == "limits.maxTokensPerTask")
        var busy = usage
        busy.running = 1
        #expect(limits.violation(adding: 1, to: busy)?.key == "limits.concurrentJobs")
    }
}
