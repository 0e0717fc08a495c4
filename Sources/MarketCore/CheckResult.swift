/// One line of `compliance-check` or `health`: a fact verified on this machine, never a claim
/// of legal compliance.
public struct CheckResult: Codable, Sendable, Equatable {
    public enum Status: String, Codable, Sendable {
        case pass, warn, fail
    }

    public var id: String
    public var status: Status
    public var message: String
    public var remediation: String

    public init(id: String, status: Status, message: String, remediation: String = "") {
        self.id = id
        self.status = status
        self.message = message
        self.remediation = remediation
    }
}

/// A list of checks with its summary, as printed by `--json`.
public struct CheckReport: Codable, Sendable {
    public struct Summary: Codable, Sendable, Equatable {
        public var passed: Int
        public var warned: Int
        public var failed: Int
    }

    public var checks: [CheckResult]
    public var summary: Summary

    public init(checks: [CheckResult]) {
        self.checks = checks
        self.summary = Summary(
            passed: checks.count { $0.status == .pass },
            warned: checks.count { $0.status == .warn },
            failed: checks.count { $0.status == .fail }
        )
    }

    public var hasFailures: Bool { summary.failed > 0 }
}
