import Foundation
import TestSupport
import Testing

/// The local commands of the foundation, run as the built executable in a temporary CMM_HOME.
@Suite struct FoundationCommandTests {
    let home = TemporaryDirectory("cmm-cli")

    func run(_ arguments: String..., environment: [String: String] = [:], stdin: Data? = nil) throws -> CLIResult {
        try CLIRunner.run(arguments, home: home.url, environment: environment, stdin: stdin)
    }

    @Test func statusJSONOnAFreshHome() throws {
        let result = try run("status", "--json")
        #expect(result.exitCode == 0)
        let object = try result.jsonObject()
        #expect(object["optedIn"] as? Bool == false)
        #expect(object["termsAccepted"] as? Bool == false)
        #expect(object["identity"] == nil, "status does not create keys")
        let limits = try #require(object["limits"] as? [String: Any])
        for key in ["dailyTasks", "weeklyTasks", "monthlyTasks", "dailyTokens", "maxTokensPerTask", "concurrentJobs"] {
            #expect(limits[key] is Int, "\(key)")
        }
        #expect(limits["dailyTasks"] as? Int == 5)
        let usage = try #require(object["usage"] as? [String: Any])
        #expect((usage["day"] as? [String: Any])?["tasks"] as? Int == 0)
    }

    @Test func termsAcceptOptInOptOutFlow() throws {
        let refused = try run("opt-in", "--claude-jobs", "--yes")
        #expect(refused.exitCode != 0)
        #expect(refused.stderr.contains("terms --accept"))

        let terms = try run("terms")
        #expect(terms.exitCode == 0)
        #expect(terms.stdout.contains("Consumer Terms") && terms.stdout.contains("not accepted"))

        let accepted = try run("terms", "--accept", "--json")
        #expect(accepted.exitCode == 0)
        #expect(try accepted.jsonObject()["accepted"] as? Bool == true)

        let noTTY = try run("opt-in", "--claude-jobs")
        #expect(noTTY.exitCode != 0)
        #expect(noTTY.stderr.contains("--yes"))
        #expect(try run("status", "--json").jsonObject()["optedIn"] as? Bool == false)

        #expect(try run("opt-in", "--claude-jobs", "--yes").exitCode == 0)
        let status = try run("status", "--json").jsonObject()
        #expect(status["optedIn"] as? Bool == true && status["termsAccepted"] as? Bool == true)

        #expect(try run("opt-out").exitCode != 0)
        #expect(try run("opt-out", "--yes").exitCode == 0)
        #expect(try run("status", "--json").jsonObject()["optedIn"] as? Bool == false)

        let audit = try run("audit", "--format", "json")
        let kinds = try #require(try audit.json() as? [[String: Any]]).compactMap { $0["kind"] as? String }
        #expect(kinds == ["terms.accepted", "consent.opt-in", "consent.opt-out"])
    }

    @Test func configCommands() throws {
        let list = try run("config", "--list", "--json")
        #expect(list.exitCode == 0)
        let items = try #require(try list.jsonObject()["items"] as? [[String: Any]])
        #expect(items.count >= 16)
        #expect(items.allSatisfy { $0["layer"] as? String == "default" && $0["allowed"] is String })

        #expect(try run("config", "--set", "limits.dailyTasks=3", "--set", "docker.memory=1g").exitCode == 0)
        #expect(try run("config", "--get", "limits.dailyTasks").stdout == "3\n")
        let fromEnvironment = try run(
            "config", "--get", "limits.dailyTasks", "--json", environment: ["CMM_LIMITS_DAILYTASKS": "4"])
        #expect(try fromEnvironment.jsonObject()["layer"] as? String == "environment")
        #expect(try fromEnvironment.jsonObject()["value"] as? String == "4")

        let exported = home.file("exported.json")
        #expect(try run("config", "--export", exported.path).exitCode == 0)
        #expect(try run("config", "--reset").exitCode == 0)
        #expect(try run("config", "--get", "limits.dailyTasks").stdout == "5\n")
        #expect(try run("config", "--import", exported.path).exitCode == 0)
        #expect(try run("config", "--get", "docker.memory").stdout == "1g\n")
        #expect(try run("config", "--unset", "docker.memory").exitCode == 0)
        #expect(try run("config", "--get", "docker.memory").stdout == "512m\n")
    }

    @Test func badConfigInputIsRefusedAndChangesNothing() throws {
        #expect(try run("config", "--set", "limits.dailyTasks=3").exitCode == 0)
        let configFile = home.file("config.json")
        let before = try Data(contentsOf: configFile)
        let cases: [([String], String)] = [
            (
                ["config", "--set", "limits.dailyTasks=0"],
                "Error: invalid value '0' for limits.dailyTasks in config --set"
            ),
            (["config", "--set", "limits.dailyTasks=abc"], "'abc'"),
            (["config", "--set", "no.such=1"], "unknown config key 'no.such'"),
            (["config", "--set", "approval.mode=yolo"], "manual, policy"),
            (["config", "--set", "novalue"], "KEY=VALUE"),
            (["config", "--get", "no.such"], "unknown config key"),
            (["config", "--unset", "no.such"], "unknown config key"),
            (["limits", "--daily=-1"], "limits.dailyTasks"),
            (["limits", "--daily", "0"], "invalid value '0' for limits.dailyTasks in limits:"),
            (["limits", "--concurrent", "100000"], "limits.concurrentJobs"),
            (["limits", "--weekly", "2"], "limits.weeklyTasks=2"),
            (["limits", "--tokens-daily", "99999999999999999999999"], "limits.dailyTokens"),
            (
                ["config", "--export", "/nonexistent-cmm/c.json"],
                "Error: /nonexistent-cmm/c.json: No such file or directory"
            ),
            (
                ["keys", "export-public", "--output", "/nonexistent-cmm/k.json"],
                "/nonexistent-cmm/k.json: No such file"
            ),
        ]
        for (arguments, expected) in cases {
            let result = try CLIRunner.run(arguments, home: home.url)
            #expect(result.exitCode != 0, "\(arguments)")
            #expect(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
            #expect(result.stdout.isEmpty, "\(arguments)")
            #expect(!result.stderr.contains("NSCocoaErrorDomain"), "\(arguments): \(result.stderr)")
        }
        let bad = home.file("bad.json")
        try Data(#"{"limits.dailyTasks": 2, "unknown.key": true}"#.utf8).write(to: bad)
        let imported = try run("config", "--import", bad.path)
        #expect(imported.exitCode != 0 && imported.stderr.contains("unknown.key"))
        #expect(try Data(contentsOf: configFile) == before)
        // An invalid environment value names the variable.
        let env = try run("status", environment: ["CMM_LIMITS_DAILYTASKS": "lots"])
        #expect(env.exitCode != 0 && env.stderr.contains("CMM_LIMITS_DAILYTASKS"))
        // A misspelt variable is refused, not ignored.
        let typo = try run("status", environment: ["CMM_LIMITS_DAILYTASK": "3"])
        #expect(typo.exitCode != 0, "\(typo.stdout)")
        #expect(
            typo.stderr.contains(
                "unknown environment variable CMM_LIMITS_DAILYTASK (did you mean CMM_LIMITS_DAILYTASKS?)"))
        #expect(try Data(contentsOf: configFile) == before)
    }

    /// A market URL whose port does not fit, or that holds a control character, is refused
    /// wherever it is read (config, the environment, `--url`): never a crash, never another port.
    @Test func aBadMarketURLIsRefusedEverywhereItIsRead() throws {
        let set = try run("config", "--set", "market.url=ws://127.0.0.1:99999/market")
        #expect(set.exitCode != 0 && set.stderr.contains("port from 1 to 65535"), "\(set.stderr)")
        let fromEnvironment = try run("balance", environment: ["CMM_MARKET_URL": "ws://127.0.0.1:99999/market"])
        #expect(fromEnvironment.exitCode == 1 && fromEnvironment.stderr.contains("CMM_MARKET_URL"))
        for bad in ["ws://127.0.0.1:99999/market", "ws://127.0.0.1:8080/\u{202E}m", "ws://127.0.0.1:8080/a b"] {
            for command in [["balance"], ["market", "status"], ["tasks"], ["provide"]] {
                let rest = command == ["provide"] ? ["--backend", "command", "--", "cat"] : []
                let result = try CLIRunner.run(command + ["--url", bad] + rest, home: home.url)
                // Refused as the arguments are parsed (64, a usage error), before anything else.
                #expect(result.exitCode == 64, "\(command) \(bad): \(result.exitCode) \(result.stderr)")
                #expect(result.stderr.contains("is not a market URL"), "\(command): \(result.stderr)")
            }
        }
        #expect(try run("config", "--get", "market.url").stdout.contains("ws://127.0.0.1:8080/market"))
    }

    @Test func limitsSetAndShow() throws {
        let set = try run(
            "limits", "--daily", "3", "--weekly", "10", "--monthly", "30", "--tokens-daily", "9000",
            "--max-tokens-per-task", "2000", "--concurrent", "2", "--json")
        #expect(set.exitCode == 0)
        let limits = try #require(try set.jsonObject()["limits"] as? [String: Int])
        #expect(
            limits == [
                "dailyTasks": 3, "weeklyTasks": 10, "monthlyTasks": 30, "dailyTokens": 9000, "maxTokensPerTask": 2000,
                "concurrentJobs": 2,
            ])
        let show = try run("limits", "--show")
        #expect(show.stdout.contains("jobs per day    3"))
        #expect(try run("audit", "--kind", "limits", "--format", "csv").stdout.contains("limits.set"))
    }

    @Test func auditFormatsFiltersAndVerify() throws {
        #expect(try run("terms", "--accept").exitCode == 0)
        #expect(try run("limits", "--daily", "2").exitCode == 0)
        let csv = try run("audit", "--format", "csv")
        let lines = csv.stdout.split(separator: "\n")
        #expect(lines.first == "seq,at,actor,kind,details,prev_hash,hash")
        #expect(lines.count == 3)
        #expect(try run("audit", "--kind", "terms", "--format", "json").json() as? [Any] != nil)
        let future = try run("audit", "--since", "2999-01-01", "--format", "json")
        #expect((try future.json() as? [Any])?.isEmpty == true)
        let badSince = try run("audit", "--since", "yesterday-ish")
        #expect(badSince.exitCode != 0 && badSince.stderr.contains("yesterday-ish"))
        let output = home.file("audit.csv")
        #expect(try run("audit", "--format", "csv", "--output", output.path).exitCode == 0)
        #expect(try String(contentsOf: output, encoding: .utf8) == csv.stdout)

        let verify = try run("audit", "--verify", "--json")
        #expect(verify.exitCode == 0)
        #expect(try verify.jsonObject()["intact"] as? Bool == true)

        // Tamper with the database directly (as an attacker with file access would).
        try Sqlite.execute(
            home.file("state.sqlite"),
            "DROP TRIGGER audit_no_update; UPDATE audit SET details = '{\"limits.dailyTasks\":\"200\"}' WHERE seq = 2;")
        let broken = try run("audit", "--verify")
        #expect(broken.exitCode == 1)
        #expect(broken.stdout.contains("BROKEN at entry 2"))
        let compliance = try run("compliance-check", "--json")
        #expect(compliance.exitCode == 1)
        let checks = try #require(try compliance.jsonObject()["checks"] as? [[String: Any]])
        #expect(checks.first { $0["id"] as? String == "audit.chain" }?["status"] as? String == "fail")
    }

    @Test func complianceCheckReportsFacts() throws {
        let fresh = try run("compliance-check", "--json")
        #expect(fresh.exitCode == 1)
        let object = try fresh.jsonObject()
        let checks = try #require(object["checks"] as? [[String: Any]])
        let byID = Dictionary(uniqueKeysWithValues: checks.map { ($0["id"] as! String, $0) })
        #expect(byID["terms.accepted"]?["status"] as? String == "fail")
        #expect(byID["optin.recorded"]?["status"] as? String == "warn")
        #expect(byID["files.permissions"]?["status"] as? String == "pass")
        #expect(checks.allSatisfy { $0["remediation"] is String && $0["message"] is String })
        let summary = try #require(object["summary"] as? [String: Int])
        #expect(summary["failed"] == 1)

        #expect(try run("terms", "--accept").exitCode == 0)
        #expect(try run("opt-in", "--claude-jobs", "--yes").exitCode == 0)
        #expect(try run("compliance-check").exitCode == 0)

        chmod(home.file("state.sqlite").path, 0o644)
        let exposed = try run("compliance-check", "--json")
        #expect(exposed.exitCode == 1)
        #expect(exposed.stdout.contains("state.sqlite (644)"))
        #expect(!(try run("compliance-check").stdout.lowercased().contains("you are compliant")))
    }

    @Test func helpExplainsEveryCommand() throws {
        let help = try run("--help")
        #expect(help.exitCode == 0)
        for command in ["config", "terms", "opt-in", "opt-out", "limits", "status", "audit", "compliance-check"] {
            #expect(help.stdout.contains(command), "\(command)")
        }
        let unknown = try run("frobnicate")
        #expect(unknown.exitCode != 0)
    }
}
