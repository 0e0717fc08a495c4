import Foundation
import MarketCore
import MarketFlows
import MarketProtocol
import Participant
import Testing

/// The provider's per-task decisions, without a market, a requester or Docker: each event's actions.
@Suite struct ProviderTaskMachineTests {
    static let requester = "R" + String(repeating: "A", count: 31)

    static func payload(workspace: Bool = false, conversation: Bool = false) throws -> JobContent.Payload {
        var object: [String: Any] = ["v": 1, "taskId": "t1", "prompt": Data("hi".utf8).base64EncodedString()]
        let blob: [String: Any] = ["bytes": 10, "sha256": "00", "chunks": 2]
        if workspace { object["workspace"] = ["blob": blob, "files": 3, "bytes": 10, "leftOut": []] }
        if conversation { object["conversation"] = ["blob": blob, "sessionId": "s", "turns": 2] }
        return try JSONDecoder().decode(JobContent.Payload.self, from: JSONSerialization.data(withJSONObject: object))
    }

    static func names(_ actions: [ProviderTaskMachine.Action]) -> [String] {
        actions.map { action in
            switch action {
            case .recordWon: "record won"
            case .record(let state, _): "record \(state)"
            case .note: "note"
            case .audit(let kind, _): "audit \(kind)"
            case .reject: "reject"
            case .awaitInputs: "await inputs"
            case .start(_, let workspace, _): workspace == nil ? "start" : "start with workspace"
            case .tellMarket(let type, _): "tell \(type.rawValue)"
            case .forget: "forget"
            }
        }
    }

    static func won() -> ProviderTaskMachine {
        var machine = ProviderTaskMachine(taskId: "t1")
        _ = machine.apply(.assigned(requester: requester, price: 5))
        return machine
    }

    @Test func aWonTaskIsRecordedOnceAndAPlainPayloadStartsAtOnceOnlyOnce() throws {
        var machine = ProviderTaskMachine(taskId: "t1")
        #expect(Self.names(machine.apply(.assigned(requester: Self.requester, price: 5))) == ["note", "record won"])
        #expect(Self.names(machine.apply(.assigned(requester: Self.requester, price: 5))).isEmpty)
        #expect(Self.names(machine.apply(.payload(try Self.payload(), .init()))) == ["start"])
        #expect(machine.phase == .running)
        #expect(Self.names(machine.apply(.payload(try Self.payload(), .init()))).isEmpty, "sent again: ignored")
        #expect(
            Self.names(machine.apply(.jobEnded(.delivered(summary: "succeeded in 1.0 s"))))
                == ["record delivered", "note"])
    }

    @Test func aPayloadIsRejectedWhenTheProviderCannotTakeIt() throws {
        let cases: [(ProviderTaskMachine.Conditions, Bool, String)] = [
            (.init(optedOut: true), false, "the provider has opted out"),
            (.init(stopping: true), false, "the provider is stopping"),
            (.init(runsClaude: false), true, "cannot continue a conversation"),
        ]
        for (conditions, conversation, why) in cases {
            var machine = Self.won()
            let actions = machine.apply(.payload(try Self.payload(conversation: conversation), conditions))
            #expect(Self.names(actions) == ["note", "record rejected", "reject"])
            guard case .reject(let reason) = actions.last else { continue }
            #expect(reason.contains(why), "\(reason)")
            #expect(machine.phase == .ended)
        }
        var unsigned = Self.won()
        #expect(
            Self.names(unsigned.apply(.payloadUnsigned(problem: "bad signature"))) == [
                "note", "audit market.payload-refused",
            ])
        #expect(unsigned.phase == .assigned, "a forged payload changes nothing: the real one may still come")
        #expect(
            Self.names(unsigned.apply(.payloadUnreadable(problem: "not sealed to us"))) == [
                "note", "record rejected", "reject",
            ])
    }

    @Test func aWorkspaceJobWaitsForItsInputsAndGivesUpOnThemInTime() throws {
        var machine = Self.won()
        #expect(
            Self.names(machine.apply(.payload(try Self.payload(workspace: true), .init()))) == ["note", "await inputs"])
        #expect(machine.phase == .awaitingInputs && machine.awaiting != nil)
        var late = machine
        let lateActions = late.apply(.inputsLate(seconds: 120))
        #expect(Self.names(lateActions) == ["note", "record rejected", "reject"])
        guard case .reject(let reason) = lateActions.last else { return }
        #expect(reason == "the workspace did not arrive whole within 120 s of its payload")
        #expect(Self.names(late.apply(.inputsOpened(workspace: nil, conversation: nil))).isEmpty)

        var refused = machine
        #expect(
            Self.names(refused.apply(.inputsRefused(reason: "too large"))) == ["note", "record rejected", "reject"])
        #expect(Self.names(machine.apply(.inputsOpened(workspace: nil, conversation: nil))) == ["start"])
        #expect(Self.names(machine.apply(.inputsLate(seconds: 120))).isEmpty, "the timer after the start is moot")
    }

    @Test func inputsThatStoppedTheProviderAreRefusedNotReadAgain() throws {
        var machine = ProviderTaskMachine(taskId: "t1")
        _ = machine.apply(.assigned(requester: Self.requester, price: 5))
        #expect(Self.names(machine.apply(.inputsStoppedTheProvider)) == ["note", "record rejected", "reject"])
        #expect(machine.phase == .ended)
        // The payload the market sends again after the restart is not opened.
        #expect(Self.names(machine.apply(.payload(try Self.payload(workspace: true), .init()))).isEmpty)
    }

    @Test func howAJobEndsDecidesWhatTheMarketIsTold() {
        let ends: [(ProviderTaskMachine.JobEnd, [String])] = [
            (
                .handedBack(reason: "5h window"),
                ["note", "record handed-back", "audit market.handed-back", "tell job.handback"]
            ),
            (.stopped, ["record handed-back", "tell job.failed"]),
            (.failedHere(reason: "engine died", sent: nil), ["note", "record failed", "tell job.failed"]),
            (.refused(reason: "over the daily limit"), ["note", "record rejected", "reject"]),
        ]
        for (end, expected) in ends {
            var machine = Self.won()
            #expect(Self.names(machine.apply(.jobEnded(end))) == expected, "\(end)")
        }
        var machine = Self.won()
        guard case .tellMarket(_, let reason) = machine.apply(.jobEnded(.failedHere(reason: "x", sent: "told")))[2]
        else { return }
        #expect(reason == "told")
    }

    @Test func settlementsAndDisputesAreRecordedAndAFinalOrReopenedTaskIsForgotten() {
        var machine = Self.won()
        #expect(
            Self.names(machine.apply(.dispute(reason: "wrong answer")))
                == ["record disputed", "note", "audit market.disputed"])
        for (state, forgets) in [("settled", true), ("refunded", true), ("open", true), ("disputed", false)] {
            var each = Self.won()
            let body = SettlementBody(taskId: "t1", state: WireEnum(rawValue: state), reason: nil, movements: [])
            let actions = Self.names(each.apply(.settlement(body, earned: 4_000_000)))
            #expect(actions.first == "record \(state)")
            #expect(actions.contains("forget") == forgets, "\(state)")
        }
    }
}
