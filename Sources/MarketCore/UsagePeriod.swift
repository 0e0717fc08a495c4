import Foundation

/// A calendar window that limits and usage are counted in. Weeks are ISO weeks (Monday first).
/// The calendar (and so the time zone) is passed in, never read from the machine here.
public enum UsagePeriod: String, Codable, Sendable, CaseIterable {
    case day, week, month

    /// The half-open interval `[start, end)` of this period that contains `date`.
    public func interval(containing date: Date, calendar: Calendar) -> DateInterval {
        var calendar = calendar
        calendar.firstWeekday = 2
        calendar.minimumDaysInFirstWeek = 4
        let component: Calendar.Component =
            switch self {
            case .day: .day
            case .week: .weekOfYear
            case .month: .month
            }
        guard let interval = calendar.dateInterval(of: component, for: date) else {
            preconditionFailure("the calendar has no \(component) containing \(date)")
        }
        return interval
    }

    /// A UTC Gregorian calendar: the default for counting usage.
    public static var utcCalendar: Calendar {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }
}
