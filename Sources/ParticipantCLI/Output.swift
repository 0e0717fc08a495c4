import Foundation
import MarketCore

/// Printing for people (tables, lines) and programs (`--json`: clean JSON on stdout only).
/// Everything written for people as text passes `TerminalText`: much of it quotes a peer or a
/// job (output, reasons, names), and no escape sequence of theirs may reach the terminal. JSON
/// keeps the exact text, JSON-escaped.
package enum Output {
    package static func json(_ value: some Encodable) throws {
        stdout(try jsonData(value))
    }

    /// Pretty, sorted, ISO 8601 dates, ending in a newline.
    package static func jsonData(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return try encoder.encode(value) + Data("\n".utf8)
    }

    /// One compact JSON object on one line: a stream of events (`--json` on long commands).
    package static func jsonLine(_ value: some Encodable) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        if let data = try? encoder.encode(value) { stdout(data + Data("\n".utf8)) }
    }

    package static func line(_ text: String = "") {
        stdout(Data((TerminalText.escaped(text) + "\n").utf8))
    }

    /// Text as it streams (a job's output, Claude's words), with no line end added.
    package static func text(_ text: String) {
        stdout(Data(TerminalText.escaped(text).utf8))
    }

    /// Diagnostics and progress: stderr, so that stdout stays parseable.
    package static func note(_ text: String) {
        stderr(Data((TerminalText.escaped(text) + "\n").utf8))
    }

    /// Writes that survive a closed pipe (`… | head`): the error is ignored, not a crash.
    package static func stdout(_ data: Data) {
        try? FileHandle.standardOutput.write(contentsOf: data)
    }

    package static func stderr(_ data: Data) {
        try? FileHandle.standardError.write(contentsOf: data)
    }

    /// Cells are shown as one line each (`TerminalText.line`), so that widths are what shows.
    package static func table(_ header: [String], _ rows: [[String]]) -> String {
        let rows = rows.map { $0.map(TerminalText.line) }
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.count)
            }
        }
        func render(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        var lines = [render(header), render(widths.map { String(repeating: "-", count: $0) })]
        lines += rows.map(render)
        return lines.joined(separator: "\n")
    }

    package static var stdinIsTerminal: Bool { isatty(STDIN_FILENO) == 1 }
    package static var stdoutIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }
    package static var stderrIsTerminal: Bool { isatty(STDERR_FILENO) == 1 }

    /// Asks a yes/no question on the terminal. Without a terminal, refuses instead of hanging.
    /// Runs blocking work (a question on the terminal) on a thread of its own, so that a task
    /// waiting for it does not hold a thread of the concurrency pool.
    package static func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }

    package static func confirm(_ question: String, assumeYes: Bool) throws -> Bool {
        if assumeYes { return true }
        guard stdinIsTerminal else {
            throw CLIError("this needs confirmation and there is no terminal to ask on: rerun with --yes", exitCode: 2)
        }
        FileHandle.standardError.write(Data("\(TerminalText.escaped(question)) [y/N] ".utf8))
        guard let answer = readLine()?.trimmingCharacters(in: .whitespaces).lowercased() else { return false }
        return answer == "y" || answer == "yes"
    }

    /// Writes `data` to FILE, or stdout for `-`.
    package static func write(_ data: Data, to path: String) throws {
        if path == "-" {
            FileHandle.standardOutput.write(data)
        } else {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        }
    }

    package static func csvField(_ text: String) -> String {
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

/// Dates given on the command line: `2026-11-25`, an ISO 8601 time, or an age like `7d`, `12h`.
enum DateArgument {
    package static func parse(_ text: String, now: Date) -> Date? {
        if let last = text.last, let amount = Double(text.dropLast()), amount >= 0 {
            let unit: Double? = ["d": 86_400, "h": 3_600, "m": 60, "w": 604_800][last]
            if let unit { return now.addingTimeInterval(-amount * unit) }
        }
        let day = DateFormatter()
        day.locale = Locale(identifier: "en_US_POSIX")
        day.timeZone = TimeZone(identifier: "UTC")
        day.dateFormat = "yyyy-MM-dd"
        if let date = day.date(from: text) { return date }
        return try? Date(text, strategy: .iso8601)
    }

    static let allowed = "a date (2026-11-25), an ISO 8601 time (2026-11-25T10:00:00Z) or an age (7d, 12h, 30m, 2w)"
}
