extension FixedWidthInteger where Self: SignedInteger {
    /// The sum, or the bound it passed: for counts a peer or a job claims, which must not trap
    /// when they are added up.
    public func saturatingAdd(_ other: Self) -> Self {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? (other > 0 ? .max : .min) : sum
    }
}

extension Sequence where Element: FixedWidthInteger & SignedInteger {
    /// The sum of counts from someone else, without trapping.
    public func saturatingSum() -> Element { reduce(0) { $0.saturatingAdd($1) } }
}
