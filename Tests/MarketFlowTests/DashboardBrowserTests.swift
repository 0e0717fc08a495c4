import Foundation
import TestSupport
import Testing

/// The dashboard in a real browser: headless Chromium (through Python selenium) against a real
/// `market serve` whose jobs ran through the real client, provider daemon and Docker.
@Suite(
    .enabled(
        if: DockerTestEnvironment.shouldRun && BrowserTestEnvironment.shouldRun,
        "no Docker engine or no Chromium (scripts/test.sh installs and starts both)"),
    .serialized)
struct DashboardBrowserTests {
    init() async throws { try await Flow.ensureImage() }

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test func thePageShowsTheMarketUpdatesLiveSaysWhenItLosesItAndRecovers() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let provider = try await flow.provider("page-provider")
        _ = try await flow.provide(provider, command: ["sh", "-c", "echo \"done: $(cat)\""])
        let requester = try await flow.requester("page-requester")
        for index in 0..<3 {
            try await flow.cli(requester, ["submit", "--prompt", "job \(index)", "--max-price", "5", "--wait"])
        }
        // One task left open (below the offer's price) for the open-tasks table.
        try await flow.cli(requester, ["submit", "--prompt", "too cheap", "--max-price", "1"])

        let output = Self.repository.appending(path: ".build/test-output")
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        let screenshot = output.appending(path: "dashboard.png")
        try? FileManager.default.removeItem(at: screenshot)
        let script = Self.repository.appending(path: "Tests/MarketFlowTests/Browser/dashboard_check.py")
        // In a session of its own: chromedriver and Chromium go with the script however it ends.
        let browser = try Daemon(
            arguments: [], home: flow.home("browser"), log: flow.directory.file("browser.log"),
            executable: URL(fileURLWithPath: "/usr/bin/setsid"),
            prefix: ["python3", script.path, flow.market.httpBase, screenshot.path])
        defer {
            kill(-browser.pid, SIGKILL)
            browser.stop(SIGKILL)
        }
        try await browser.waitFor("CHECKED", timeout: 90)
        try await flow.cli(requester, ["submit", "--prompt", "while watched", "--max-price", "5", "--wait"])
        try await browser.waitFor("UPDATED", timeout: 90)
        try await flow.stopMarket()
        try await browser.waitFor("LOST", timeout: 60)
        try await flow.restartMarket()
        try await browser.waitFor("RECOVERED", timeout: 60)
        #expect(try await browser.wait(timeout: 30) == 0, "\(browser.output)")
        #expect(FileManager.default.fileExists(atPath: screenshot.path))
    }
}
