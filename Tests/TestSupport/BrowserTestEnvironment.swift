import Foundation

/// Whether the dashboard's browser test can run: headless Chromium, its driver and Python
/// selenium. In CI (`CI=true`) or under `scripts/test.sh` (`CMM_REQUIRE_BROWSER=1`) a missing
/// browser is a failure, not a skip.
public enum BrowserTestEnvironment {
    public static var isRequired: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["CI"] == "true" || environment["CMM_REQUIRE_BROWSER"] == "1"
    }

    public static var isAvailable: Bool {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].contains {
            FileManager.default.isExecutableFile(atPath: $0)
        }
        let driver = FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver")
        guard chromium, driver,
            let result = try? CLIRunner.runProcess(
                URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-c", "import selenium"],
                environment: ProcessInfo.processInfo.environment)
        else { return false }
        return result.exitCode == 0
    }

    public static var shouldRun: Bool { isAvailable || isRequired }
}
