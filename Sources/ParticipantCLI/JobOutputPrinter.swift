import Foundation
import JobRunner
import MarketCore
import Participant
import Workspace

/// Prints a job's output as it arrives and writes every line to the job's event log, in
/// batches written off the output path (`JobEventWriter`), and at least every 100 ms.
final class JobOutputPrinter: @unchecked Sendable {
    let json: Bool
    let jobID: String
    let jobs: JobStore
    private let lock = NSLock()
    private let writer: JobEventWriter
    private var flusher: Task<Void, Never>?
    /// People see claude's parsed events; a command backend's lines are shown as they are.
    let printsLines: Bool

    init(json: Bool, jobID: String, jobs: JobStore, printsLines: Bool) {
        self.printsLines = printsLines
        self.json = json
        self.jobID = jobID
        self.jobs = jobs
        self.writer = JobEventWriter(jobs: jobs)
    }

    struct Line: Encodable {
        var job: String
        var type: String
        var stream: String?
        var text: String?
    }

    /// Stops the timer and writes the rest.
    func finish() async {
        lock.withLock { flusher?.cancel() }
        await writer.finish()
    }

    private func record(_ stream: String, _ kind: String, _ line: String) {
        writer.append(NewJobEvent(jobID: jobID, stream: stream, kind: kind, line: line, at: Date()))
        if flusher == nil {
            let writer = self.writer
            flusher = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(100))
                    writer.flushSoon()
                }
            }
        }
    }

    func handle(_ output: JobOutput) {
        lock.withLock {
            switch output {
            case .started(let id):
                record("system", "started", "container \(id.prefix(12))")
                emit(Line(job: jobID, type: "started", text: "container \(id.prefix(12))"), human: nil)
            case .line(let stream, let text):
                let name = stream == .stderr ? "stderr" : "stdout"
                record(name, "line", text)
                if !json && stream == .stderr {
                    Output.note(text)
                } else {
                    emit(Line(job: jobID, type: "line", stream: name, text: text), human: printsLines ? text : nil)
                }
            case .event(let event):
                switch event {
                case .text(let text): emit(nil, human: text)
                // Written by the job (or the API it reached): one line of ours each.
                case .toolUse(let name): emit(nil, human: "[tool: \(TerminalText.line(name))]")
                case .rateLimit(let notice):
                    emit(
                        nil,
                        human: "[rate limit \(TerminalText.line(notice.window)): \(TerminalText.line(notice.status))]")
                case .notJSON(let line): emit(nil, human: "[not JSON] \(TerminalText.line(line))")
                default: break
                }
            }
        }
    }

    private func emit(_ line: Line?, human: String?) {
        if json, let line {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            if let data = try? encoder.encode(line) { Output.stdout(data + Data("\n".utf8)) }
        } else if !json, let human {
            Output.line(human)
        }
    }

    func summary(_ report: JobReport) {
        let total = report.totalUsage
        let seconds = report.duration.inSeconds
        if json {
            struct Summary: Encodable {
                var job: String
                var type = "result"
                var state: String
                var exitCode: Int?
                var inputTokens: Int64
                var outputTokens: Int64
                var costUSD: Double
                var seconds: Double
                var redactions: Int
                var error: String?
                var sessionId: String?
                var transcriptTurns: Int?
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            if let data = try? encoder.encode(
                Summary(
                    job: jobID, state: report.state.rawValue, exitCode: report.exitCode, inputTokens: total.inputTokens,
                    outputTokens: total.outputTokens, costUSD: total.costUSD, seconds: seconds,
                    redactions: report.redactions, error: report.error, sessionId: report.sessionID,
                    transcriptTurns: report.transcript?.turns.count))
            {
                Output.stdout(data + Data("\n".utf8))
            }
            return
        }
        Output.note(
            String(
                format: "job %@ %@ in %.1f s — %lld in / %lld out tokens%@%@", jobID, report.state.rawValue, seconds,
                total.inputTokens, total.outputTokens,
                report.redactions > 0 ? ", \(report.redactions) secrets redacted" : "",
                report.error.map { " — \(TerminalText.line($0))" } ?? ""))
        if let transcript = report.transcript {
            Output.note(
                "conversation kept (\(transcript.turns.count) turns): continue it with `execute --follow-up \(jobID) --prompt …`"
            )
        }
    }

    /// A workspace job's patch, as one JSON line (with --json).
    func workspace(_ outcome: WorkspaceOutcome) {
        guard json else { return }
        struct Line: Encodable {
            var job: String
            var type = "patch"
            var baseHash: String?
            var files: [WorkspacePatch.FileChange]
            var bytes: Int
            var skipped: [String]
            var error: String?
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let line = Line(
            job: jobID, baseHash: outcome.patch?.baseHash, files: outcome.patch?.files ?? [],
            bytes: outcome.patch?.data.count ?? 0, skipped: outcome.skipped.map { "\($0.path): \($0.reason)" },
            error: outcome.error)
        if let data = try? encoder.encode(line) { Output.stdout(data + Data("\n".utf8)) }
    }
}
