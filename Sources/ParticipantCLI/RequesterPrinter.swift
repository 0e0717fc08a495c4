import ArgumentParser
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketProtocol
import Participant
import Synchronization
import Workspace

/// Renders a requester's progress for people (stderr notes, the output on stdout) or as JSON lines.
struct RequesterPrinter: Sendable {
    let json: Bool
    /// Whether any output was streamed: the result's output is printed only when none was.
    let streamed = OnceFlag()
    /// Whether text deltas were printed since the last whole message: the message then only
    /// ends the line.
    let midMessage = OnceFlag()

    struct Line: Encodable {
        var type: String
        var taskId: String?
        var state: String?
        var provider: String?
        var price: Int64?
        var stream: String?
        var text: String?
        var note: String?
        var result: JobContent.Result?
        var estimate: BookEstimate?
    }

    func emit(_ line: Line) { Output.jsonLine(line) }

    func estimate(_ estimate: BookEstimate, maxPrice: Int64) {
        if json { return emit(Line(type: "estimate", estimate: estimate)) }
        if let price = estimate.price {
            Output.note(
                "estimate: \(Credits(micro: price)) (of at most \(Credits(micro: maxPrice))), \(estimate.freeSlots) free slot(s): it should start at once"
            )
        } else {
            Output.note("no provider can take it now: \(TerminalText.line(estimate.why ?? "?")); it waits in the book")
        }
    }

    func posted(_ ack: AckBody) {
        if json { return emit(Line(type: "posted", taskId: ack.taskId, state: ack.state?.rawValue, note: ack.note)) }
        Output.note(
            "task \(TerminalText.line(ack.taskId ?? "?")) posted: \(TerminalText.line(ack.state?.rawValue ?? "?"))"
                + (ack.note.map { " (\(TerminalText.line($0)))" } ?? ""))
    }

    func update(_ update: RequesterUpdate) {
        switch update {
        case .assigned(let provider, let price):
            if json { return emit(Line(type: "assigned", provider: provider, price: price)) }
            Output.note(
                "assigned to \(TerminalText.line(provider)) at \(Credits(micro: price)); payload sealed to its key")
        case .approved(let provider):
            if json { return emit(Line(type: "approved", provider: provider)) }
            Output.note("approved by the provider; running")
        case .items(let items):
            if items.contains(where: { $0.kind != .known(.started) }) { streamed.set() }
            for item in items {
                if json {
                    emit(Line(type: "event", stream: item.stream?.rawValue, text: item.text, note: item.kind.rawValue))
                    continue
                }
                switch item.kind.known {
                case .line where item.stream == .known(.stderr): Output.note(item.text ?? "")
                case .line: Output.line(item.text ?? "")
                case .delta:
                    Output.text(item.text ?? "")
                    midMessage.set()
                case .text:
                    if midMessage.take() { Output.line() } else { Output.line(item.text ?? "") }
                case .tool: Output.line("[tool: \(TerminalText.line(item.text ?? ""))]")
                case .started, nil: break
                }
            }
        case .rejected(let provider, let reason), .failed(let provider, let reason):
            if json { return emit(Line(type: "provider-fault", provider: provider, note: reason)) }
            Output.note("the provider \(TerminalText.line(provider)) gave the job back: \(TerminalText.line(reason))")
        case .handedBack(let provider, let reason):
            if json { return emit(Line(type: "handed-back", provider: provider, note: reason)) }
            Output.note(
                "the provider \(TerminalText.line(provider)) is at its account's limit and handed the job back: "
                    + TerminalText.line(reason))
        case .result(let result, let provider):
            if json { return emit(Line(type: "result", provider: provider, result: result)) }
            if !streamed.isSet && !result.output.isEmpty { Output.text(result.output) }
            Output.note(
                "result from \(TerminalText.line(provider)): \(TerminalText.line(result.state.rawValue)), signature and hash verified"
                    + (result.metered
                        ? ", \(result.usage.inputTokens) in / \(result.usage.outputTokens) out tokens (metered)" : ""))
        case .patch(let patch):
            if json {
                return emit(Line(type: "patch", note: patch.isEmpty ? "no changes" : "\(patch.files.count) files"))
            }
            Output.note(
                "patch received and checked (\(patch.data.count) bytes, base \(TerminalText.line(String(patch.baseHash.prefix(19))))…)"
            )
        case .transcript(let transcript):
            if json { return emit(Line(type: "transcript", note: transcript.sessionID)) }
            Output.note(
                "conversation kept (\(transcript.turns.count) turns): continue it with `submit --follow-up TASK_ID --prompt …`"
            )
        case .noTranscript(let reason):
            if json { return emit(Line(type: "no-transcript", note: reason)) }
            Output.note("no conversation to continue: \(TerminalText.line(reason))")
        case .badResult(let provider, let problem):
            if json { return emit(Line(type: "bad-result", provider: provider, note: problem)) }
            Output.note(
                "REFUSED the result from \(TerminalText.line(provider)): \(TerminalText.line(problem)); disputing")
        case .frameDropped(let reason):
            if json { return emit(Line(type: "dropped", note: reason)) }
            Output.note("ignored a frame: \(TerminalText.line(reason))")
        case .settlement(let settlement):
            if json {
                return emit(
                    Line(
                        type: "settlement", taskId: settlement.taskId, state: settlement.state.rawValue,
                        note: settlement.reason)
                )
            }
            Output.note(
                "task \(TerminalText.line(settlement.taskId)) \(TerminalText.line(settlement.state.rawValue))"
                    + (settlement.reason.map { ": \(TerminalText.line($0))" } ?? ""))
        }
    }

    func finished(_ outcome: RequesterOutcome) {
        if json { return emit(Line(type: "finished", taskId: outcome.taskId, state: outcome.state.rawValue)) }
        if outcome.state == .delivered, let result = outcome.result {
            let why =
                result.state == .known(.succeeded) && result.patch?.error != nil
                ? "the job succeeded but its patch could not be made"
                : "the job ended \(TerminalText.line(result.state.rawValue))"
            Output.note(
                "\(why), so it was not accepted: `claude-max-market accept --task-id \(outcome.taskId)` "
                    + "or `dispute --task-id \(outcome.taskId) --reason …` (the acceptance window accepts it otherwise)"
            )
        }
    }
}
