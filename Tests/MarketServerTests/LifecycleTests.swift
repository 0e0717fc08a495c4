import Foundation
import MarketClient
import MarketCore
import MarketProtocol
import MarketStore
import Testing

@Suite(.serialized) struct LifecycleTests {
    @Test func oneJobFromPostToSettlementOverRealConnections() async throws {
        try await TestMarket.with(rules: MarketRules(feeBasisPoints: 500, holdbackJobs: 0)) { market in
            let provider = TestMarket.newPeer()
            let requester = TestMarket.newPeer()
            try await market.mint(requester.peerID, 100)
            try await market.connect(provider) { providerConnection in
                try await providerConnection.ok(.offerAdvertise, AdvertiseBody(price: micro(5), slots: 1))
                try await market.connect(requester) { requesterConnection in
                    let posted = try await requesterConnection.ok(.taskPost, PostBody(taskId: "t1", maxPrice: micro(8)))
                    #expect(posted.state == "assigned")
                    let assigned = try await providerConnection.next(.taskAssigned, taskId: "t1")
                    let body = try assigned.decodeBody(AssignedBody.self)
                    #expect(body.provider == provider.peerID.rawValue)
                    #expect(body.price == micro(5))
                    // The whole maximum is in escrow until the task settles.
                    #expect(try await market.balance(.peer(requester.peerID)) == Credits(whole: 92))
                    #expect(try await market.balance(.escrow(taskID: "t1")) == Credits(whole: 8))

                    try await requesterConnection.ok(.payloadDeliver, SealedBody(taskId: "t1", sealed: "c2VhbGVk"))
                    let payload = try await providerConnection.next(.payloadDeliver, taskId: "t1")
                    #expect(payload.from == requester.peerID.rawValue)
                    try await providerConnection.ok(.jobApproved, TaskRefBody(taskId: "t1"))
                    try await providerConnection.ok(.jobEvent, SealedBody(taskId: "t1", sealed: "ZXZlbnQ=", seq: 0))
                    _ = try await requesterConnection.next(.jobEvent, taskId: "t1")
                    let hash = String(repeating: "ab", count: 32)
                    try await providerConnection.ok(
                        .jobResult, ResultBody(taskId: "t1", sealed: "cmVzdWx0", resultHash: hash))
                    let result = try await requesterConnection.next(.jobResult, taskId: "t1")
                    #expect(result.from == provider.peerID.rawValue)
                    let accepted = try await requesterConnection.ok(.jobAccept, TaskRefBody(taskId: "t1"))
                    #expect(accepted.state == "settled")
                    _ = try await providerConnection.next(.settlement, taskId: "t1")
                }
            }
            #expect(try await market.balance(.peer(provider.peerID)) == Credits(micro: micro(5) - micro(5) / 20))
            #expect(try await market.balance(.market) == Credits(micro: micro(5) / 20))
            #expect(try await market.balance(.escrow(taskID: "t1")) == .zero)
            // The requester paid the price; the 3 above it came back with the settlement.
            #expect(try await market.balance(.peer(requester.peerID)) == Credits(whole: 95))
            let audit = try await market.audit()
            #expect(audit.balanced, "\(audit.discrepancies)")
            #expect(audit.minted == (try Credits(whole: 100)))
        }
    }
}
