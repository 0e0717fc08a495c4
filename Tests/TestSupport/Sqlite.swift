import Foundation

/// Raw access to a SQLite file through the `sqlite3` shell when present, else Python's
/// sqlite3 module: tests use it to tamper with state as someone with file access could.
public enum Sqlite {
    public static func execute(_ file: URL, _ sql: String) throws {
        let result = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"),
            [
                "python3", "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
                file.path, sql,
            ],
            environment: ProcessInfo.processInfo.environment)
        guard result.exitCode == 0 else { throw CLIRunnerError(description: "sqlite failed: \(result.stderr)") }
    }
}
