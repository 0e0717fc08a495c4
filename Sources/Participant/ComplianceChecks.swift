import Foundation
import MarketCore
import MarketCrypto

/// Facts about this participant's local set-up, each verified here and now. These are
/// operational checks; none of them is, or claims to be, a statement of legal compliance.
public struct ComplianceChecks: Sendable {
    let paths: ParticipantPaths
    let database: StateDatabase
    let config: ResolvedConfig

    public init(paths: ParticipantPaths, database: StateDatabase, config: ResolvedConfig) {
        self.paths = paths
        self.database = database
        self.config = config
    }

    public func run() throws -> [CheckResult] {
        let consent = try ConsentStore(database: database).current()
        let audit = try database.pool.read { db in try AuditLog.verify(db) }
        return [
            termsCheck(consent), optInCheck(consent), approvalCheck(), limitsCheck(), auditCheck(audit),
            permissionsCheck(), subscriptionCheck(), try keyAgeCheck(),
        ]
    }

    func keyAgeCheck() throws -> CheckResult {
        let days = Int(config.integer(.keyRotationDays))
        let now = Date()
        guard let ring = try KeyStore(directory: paths.keysDirectory).load(now: now, rotationDays: days) else {
            return CheckResult(
                id: "keys.age", status: .warn, message: "no identity yet: keys are made on first use",
                remediation: "run `claude-max-market keys show` to create them")
        }
        let age = Int(now.timeIntervalSince(ring.current.created) / 86_400)
        let expired = ring.generations.filter { generation in
            generation.retired.map { now > $0.addingTimeInterval(ring.grace) } ?? false
        }
        if age > days {
            return CheckResult(
                id: "keys.age", status: .warn,
                message: "sealing key is \(age) days old, past security.keyRotationDays=\(days)",
                remediation: "run `claude-max-market keys rotate` (it also rotates by itself on next use)")
        }
        if !expired.isEmpty {
            return CheckResult(
                id: "keys.age", status: .warn,
                message: "\(expired.count) retired sealing key set(s) are past their grace period but still on disk",
                remediation: "run `claude-max-market clean` to remove them")
        }
        return CheckResult(
            id: "keys.age", status: .pass,
            message: "sealing key is \(age) days old (rotates after \(days)); peer id \(ring.peerID)")
    }

    func termsCheck(_ consent: ConsentState) -> CheckResult {
        if consent.termsAccepted {
            return CheckResult(
                id: "terms.accepted", status: .pass, message: "terms notice \(TermsNotice.version) accepted")
        }
        if let last = consent.lastAcceptance {
            return CheckResult(
                id: "terms.accepted", status: .fail,
                message: "accepted notice \(last.version) is not the current one (\(TermsNotice.version))",
                remediation: "read `claude-max-market terms`, then run `claude-max-market terms --accept`")
        }
        return CheckResult(
            id: "terms.accepted", status: .fail, message: "the terms notice has not been accepted",
            remediation: "read `claude-max-market terms`, then run `claude-max-market terms --accept`")
    }

    func optInCheck(_ consent: ConsentState) -> CheckResult {
        if let optIn = consent.optIn {
            return CheckResult(
                id: "optin.recorded", status: .pass,
                message: "opted in to \(optIn.scope) at \(optIn.at.ISO8601Format())")
        }
        return CheckResult(
            id: "optin.recorded", status: .warn, message: "not opted in: this machine runs no jobs for others",
            remediation: "run `claude-max-market opt-in --claude-jobs` to offer capacity")
    }

    func approvalCheck() -> CheckResult {
        let mode = config.text(.approvalMode)
        if mode == "manual" {
            return CheckResult(id: "approval.mode", status: .pass, message: "approval mode manual: every job is asked")
        }
        let allowed = config.list(.approvalAllowedRequesters)
        return CheckResult(
            id: "approval.mode", status: allowed.isEmpty ? .warn : .pass,
            message: "approval mode policy: prompts up to \(config.integer(.approvalMaxPromptBytes)) bytes"
                + (allowed.isEmpty ? " from any requester not denied" : " from \(allowed.count) allowed requesters"),
            remediation: allowed.isEmpty
                ? "set approval.allowedRequesters to the peer ids you trust, or approval.mode=manual" : "")
    }

    func limitsCheck() -> CheckResult {
        let keys: [ConfigKey] = [
            .dailyTasks, .weeklyTasks, .monthlyTasks, .dailyTokens, .maxTokensPerTask, .concurrentJobs,
        ]
        let atMaximum = keys.filter { key in
            guard case .integer(let range) = key.kind else { return false }
            return config.integer(key) >= range.upperBound
        }
        if atMaximum.isEmpty {
            let limits = Limits(config: config)
            return CheckResult(
                id: "limits.finite", status: .pass,
                message: "limits set: \(limits.dailyTasks)/day, \(limits.weeklyTasks)/week, "
                    + "\(limits.monthlyTasks)/month, \(limits.dailyTokens) tokens/day, \(limits.concurrentJobs) at once"
            )
        }
        return CheckResult(
            id: "limits.finite", status: .warn,
            message: "limits at their maximum: \(atMaximum.map(\.name).joined(separator: ", "))",
            remediation: "set limits you mean with `claude-max-market limits`")
    }

    func auditCheck(_ verification: AuditVerification) -> CheckResult {
        if verification.intact {
            return CheckResult(
                id: "audit.chain", status: .pass, message: "audit chain intact (\(verification.entries) entries)")
        }
        return CheckResult(
            id: "audit.chain", status: .fail,
            message: "audit chain broken at entry \(verification.firstBrokenSeq ?? 0): \(verification.reason ?? "")",
            remediation: "the local state was altered outside the tool; keep a copy for inspection, "
                + "and start a new data directory")
    }

    func permissionsCheck() -> CheckResult {
        var exposed: [String] = []
        var candidates = [paths.configDirectory, paths.dataDirectory, paths.keysDirectory, paths.configFile]
        for suffix in ["", "-wal", "-shm"] {
            candidates.append(URL(fileURLWithPath: paths.databaseFile.path + suffix))
        }
        let keyFiles =
            (try? FileManager.default.contentsOfDirectory(at: paths.keysDirectory, includingPropertiesForKeys: nil))
            ?? []
        for url in candidates + keyFiles {
            guard let mode = FilePermissions.mode(of: url.path) else { continue }
            if mode & 0o077 != 0 { exposed.append("\(url.path) (\(String(mode, radix: 8)))") }
        }
        if exposed.isEmpty {
            return CheckResult(
                id: "files.permissions", status: .pass, message: "state, config and key files are private (0600/0700)")
        }
        return CheckResult(
            id: "files.permissions", status: .fail,
            message: "readable by others: \(exposed.joined(separator: ", "))",
            remediation: "chmod 700 on directories and 600 on files, e.g. chmod -R go-rwx \(paths.dataDirectory.path)")
    }

    func subscriptionCheck() -> CheckResult {
        let mode = config.text(.claudeCredentialMode)
        let allowed = config.boolean(.marketAllowSubscriptionLogin)
        if mode == "subscription" && allowed {
            return CheckResult(
                id: "credentials.subscription-market", status: .warn,
                message: "market jobs on a subscription login are enabled; Anthropic's Consumer Terms assume "
                    + "individual use and forbid making an account available to others",
                remediation: "use claude.credentialMode=api-key, or set market.allowSubscriptionLogin=false")
        }
        let holder =
            mode == "subscription"
            ? "; jobs hold a per-job token, the subscription token stays with the gateway and no login is mounted into a job"
            : "; jobs hold a per-job token, the key stays with the gateway"
        return CheckResult(
            id: "credentials.subscription-market", status: .pass,
            message: (allowed
                ? "credential mode \(mode); subscription logins would be allowed for market jobs"
                : "credential mode \(mode); market jobs on a subscription login are off") + holder)
    }
}

public enum FilePermissions {
    /// The permission bits of a path, or nil when it does not exist.
    public static func mode(of path: String) -> Int? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Int(info.st_mode & 0o7777)
    }
}
