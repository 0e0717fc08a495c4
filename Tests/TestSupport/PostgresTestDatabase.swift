import Foundation

/// A fresh database on the throwaway PostgreSQL cluster that `scripts/test.sh` starts
/// (`CMM_TEST_POSTGRES_URL`). Without that variable the PostgreSQL tests do not run, unless
/// `CI=true` or `CMM_REQUIRE_POSTGRES=1`, where its absence is a failure.
public enum PostgresTestDatabase {
    public static var serverURL: String? {
        ProcessInfo.processInfo.environment["CMM_TEST_POSTGRES_URL"].flatMap { $0.isEmpty ? nil : $0 }
    }

    public static var isRequired: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["CI"] == "true" || environment["CMM_REQUIRE_POSTGRES"] == "1"
    }

    /// True when PostgreSQL tests should run (or must, and then fail without a server).
    public static var shouldRun: Bool { serverURL != nil || isRequired }

    /// Creates a database with a fresh name and returns its URL.
    public static func create() throws -> String {
        guard let server = serverURL else {
            throw CLIRunnerError(
                description:
                    "no PostgreSQL server: run scripts/test.sh, or set CMM_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/postgres"
            )
        }
        let name = "cmm_test_\(UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: ""))"
        let result = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"), ["psql", server, "-qAtc", "CREATE DATABASE \(name)"],
            environment: ProcessInfo.processInfo.environment)
        guard result.exitCode == 0 else {
            throw CLIRunnerError(description: "CREATE DATABASE failed: \(result.stderr)")
        }
        guard var components = URLComponents(string: server) else {
            throw CLIRunnerError(description: "bad URL \(server)")
        }
        components.path = "/\(name)"
        return components.string!
    }
}
