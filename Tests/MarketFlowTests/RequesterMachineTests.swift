import Foundation
import MarketCore
import MarketFlows
import MarketProtocol
import Participant
import Testing

/// The requester's per-task decisions, without a market or a provider: each event's actions.
@Suite struct RequesterMachineTests {
    static let provider = "P" + String(repeating: "A", count: 31)

    /// A result as a provider would seal it; `blobs` names a patch blob (a workspace job).
    static func result(state: String = "succeeded", patchBlob: Bool = false, patchError: String? = nil)
        throws -> JobContent.Result
    {
        var object: [String: Any] = [
            "v": 1, "taskId": "t1", "state": state, "output": "done", "truncated": false,
            "usage": ["inputTokens": 1, "outputTokens": 2], "metered": false, "seconds": 0.5, "redactions": 0,
        ]
        if patchBlob || patchError != nil {
            var patch: [String: Any] = ["baseHash": "abc", "files": [], "skipped": []]
            if patchBlob { patch["blob"] = ["bytes": 10, "sha256": "00", "chunks": 1] }
            if let patchError { patch["error"] = patchError }
            object["patch"] = patch
        }
        return try JSONDecoder().decode(JobContent.Result.self, from: JSONSerialization.data(withJSONObject: object))
    }

    static func settlement(_ state: String, reason: String? = nil) -> SettlementBody {
        SettlementBody(taskId: "t1", state: WireEnum(rawValue: state), reason: reason, movements: [])
    }

    /// The actions' names, in order: what is compared.
    static func names(_ actions: [RequesterMachine.Action]) -> [String] {
        actions.map { action in
            switch action {
            case .record(let state, _, _, _): "record \(state)"
            case .report(let update):
                switch update {
                case .assigned: "report assigned"
                case .approved: "report approved"
                case .items: "report items"
                case .rejected: "report rejected"
                case .failed: "report failed"
                case .handedBack: "report handed-back"
                case .result: "report result"
                case .patch: "report patch"
                case .transcript: "report transcript"
                case .noTranscript: "report no-transcript"
                case .badResult: "report bad-result"
                case .settlement: "report settlement"
                case .frameDropped: "report dropped"
                }
            case .deliverPayload: "deliver"
            case .storeResult(let hash): hash == nil ? "store unverified" : "store verified"
            case .collectBlobs: "collect blobs"
            case .audit(let kind, _): "audit \(kind)"
            case .accept: "accept"
            case .dispute: "dispute"
            case .finish: "finish"
            }
        }
    }

    @Test func anAssignmentDeliversThePayloadAndAGoodResultIsAcceptedThenSettled() throws {
        var machine = RequesterMachine(taskId: "t1", accepts: true)
        #expect(
            Self.names(machine.apply(.assigned(provider: Self.provider, price: 5)))
                == ["record assigned", "report assigned", "deliver"])
        #expect(Self.names(machine.apply(.approved)) == ["record running", "report approved"])
        #expect(Self.names(machine.apply(.events(seq: 0, items: []))) == ["report items"])
        #expect(Self.names(machine.apply(.events(seq: 0, items: []))).isEmpty, "a repeated batch is dropped")
        #expect(Self.names(machine.apply(.events(seq: 1, items: []))) == ["report items"])
        #expect(
            Self.names(machine.apply(.result(try Self.result(), hash: "h")))
                == ["store verified", "report result", "accept"])
        #expect(machine.outcome.result?.output == "done")
        #expect(
            Self.names(machine.apply(.settlement(Self.settlement("settled"))))
                == ["record settled", "report settlement", "audit market.settled", "finish"])
        #expect(machine.outcome.state == .settled && machine.outcome.provider == Self.provider)
    }

    @Test func withoutAcceptOrWithAFailedJobTheResultIsOnlyDelivered() throws {
        var asked = RequesterMachine(taskId: "t1", accepts: false)
        _ = asked.apply(.assigned(provider: Self.provider, price: 5))
        #expect(
            Self.names(asked.apply(.result(try Self.result(), hash: "h")))
                == ["store verified", "report result", "record delivered", "finish"])
        #expect(asked.outcome.state == .delivered)
        for result in [try Self.result(state: "failed"), try Self.result(patchError: "unreadable work directory")] {
            var machine = RequesterMachine(taskId: "t1", accepts: true)
            _ = machine.apply(.assigned(provider: Self.provider, price: 5))
            #expect(Self.names(machine.apply(.result(result, hash: "h"))).suffix(2) == ["record delivered", "finish"])
        }
    }

    @Test func aResultThatDoesNotCheckOutIsDisputedOnce() {
        var machine = RequesterMachine(taskId: "t1", accepts: true)
        _ = machine.apply(.assigned(provider: Self.provider, price: 5))
        let actions = machine.apply(.resultRefused(problem: "bad hash"))
        #expect(
            Self.names(actions) == [
                "store unverified", "report bad-result", "audit market.result-refused", "dispute", "record disputed",
                "finish",
            ])
        guard case .dispute(let reason) = actions[3] else { return }
        #expect(reason == "the result does not check out: bad hash")
        #expect(machine.outcome.state == .disputed)
    }

    @Test func aWorkspaceResultWaitsForItsPatchThenAcceptsOrDisputes() throws {
        var machine = RequesterMachine(taskId: "t1", accepts: true)
        #expect(Self.names(machine.apply(.blobsOpened(patch: nil, transcript: nil, transcriptProblem: nil))).isEmpty)
        _ = machine.apply(.assigned(provider: Self.provider, price: 5))
        #expect(
            Self.names(machine.apply(.result(try Self.result(patchBlob: true), hash: "h")))
                == ["store verified", "report result", "collect blobs"])
        #expect(machine.awaitingBlobs != nil)
        #expect(
            Self.names(machine.apply(.blobsOpened(patch: nil, transcript: nil, transcriptProblem: "not a transcript")))
                == ["report no-transcript", "accept"])
        #expect(machine.awaitingBlobs == nil)

        var refused = RequesterMachine(taskId: "t1", accepts: true)
        _ = refused.apply(.assigned(provider: Self.provider, price: 5))
        _ = refused.apply(.result(try Self.result(patchBlob: true), hash: "h"))
        #expect(
            Self.names(refused.apply(.blobsRefused(problem: "the patch does not check out")))
                == ["report bad-result", "dispute", "record disputed", "finish"])
        #expect(refused.outcome.state == .disputed)
    }

    @Test func aProviderThatLetsGoIsForgottenAndItsLaterFramesCountForNothing() throws {
        for type in [MessageType.jobRejected, .jobFailed, .jobHandback] {
            var machine = RequesterMachine(taskId: "t1", accepts: true)
            _ = machine.apply(.assigned(provider: Self.provider, price: 5))
            _ = machine.apply(.events(seq: 3, items: []))
            let left = Self.names(machine.apply(.providerLeft(type, reason: "busy")))
            #expect(
                left == [
                    type == .jobRejected
                        ? "report rejected" : type == .jobHandback ? "report handed-back" : "report failed"
                ])
            #expect(machine.provider == nil && machine.nextSeq == 0)
            #expect(Self.names(machine.apply(.approved)).isEmpty)
            #expect(Self.names(machine.apply(.result(try Self.result(), hash: "h"))).isEmpty)
            // The next provider starts its batches at 0 again.
            _ = machine.apply(.assigned(provider: "Q" + Self.provider.dropFirst(), price: 4))
            #expect(Self.names(machine.apply(.events(seq: 0, items: []))) == ["report items"])
        }
    }

    @Test func settlementsEndTheFollowOnlyWhenFinalOrDisputed() {
        var machine = RequesterMachine(taskId: "t1", accepts: true)
        #expect(
            Self.names(machine.apply(.settlement(Self.settlement("open")))) == ["record open", "report settlement"])
        #expect(
            Self.names(machine.apply(.settlement(Self.settlement("disputed"))))
                == ["record disputed", "report settlement", "finish"])
        #expect(
            Self.names(machine.apply(.settlement(Self.settlement("refunded", reason: "timeout"))))
                == ["record refunded", "report settlement", "audit market.refunded", "finish"])
        // A state from a newer market is recorded as it came and ends nothing.
        #expect(
            Self.names(machine.apply(.settlement(Self.settlement("escalated"))))
                == ["record escalated", "report settlement"])
        #expect(machine.outcome.state == .unknown("escalated"))
    }

    @Test func submitWithoutWaitStopsOnceThePayloadIsOnItsWay() {
        var machine = RequesterMachine(taskId: "t1", accepts: false, stopsAtPayload: true)
        #expect(
            Self.names(machine.apply(.assigned(provider: Self.provider, price: 5))).suffix(2) == ["deliver", "finish"])
        #expect(machine.outcome.state == .assigned)
        var unverified = RequesterMachine(taskId: "t1", accepts: true)
        #expect(
            Self.names(unverified.apply(.assignedUnverified(provider: Self.provider, problem: "bad signature")))
                == ["report bad-result"])
        #expect(unverified.provider == nil)
    }
}
