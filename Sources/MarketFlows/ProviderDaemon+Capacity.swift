import Foundation
import JobRunner
import MarketCore
import MarketProtocol
import Participant

/// Capacity that follows the account's windows: the gateway reads them off the API's answers
/// (kept in `AccountLimitStore`), `capacity.*` says how much of each the provider shares, and
/// the offer is paused in the book while a window is past its share, until that window resets.
/// The reset is a timer, never a poll of the API; a job that meets the limit is handed back.
extension ProviderDaemon {
    /// Works out the pause from the stored readings; says when it starts or ends, and sets the
    /// timer for the reset. The caller advertises the offer as it then is.
    func followCapacity(config: ResolvedConfig, fromTimer: Bool = false) {
        let readings = (try? AccountLimitStore(database: database).all()) ?? []
        let pause = CapacityShares(config: config).pause(for: readings, now: settings.now())
        if fromTimer { capacityTimer = nil }
        guard pause != capacityPause else {
            // A timer that woke a moment early finds the same pause: it waits again.
            if let pause, capacityTimer == nil { armCapacityTimer(pause) }
            return
        }
        let was = capacityPause
        capacityPause = pause
        capacityTimer?.cancel()
        capacityTimer = nil
        guard let pause else {
            if let was {
                note("capacity returned: the \(was.window) window reset, the offer takes jobs again")
                audit("provider.capacity-returned", ["window": was.window])
            }
            return
        }
        let until = Matching.time(pause.until.unixMilliseconds)
        note("capacity: \(pause.reason); the offer is paused until \(until)")
        audit("provider.capacity-paused", ["window": pause.window, "until": until, "reason": pause.reason])
        armCapacityTimer(pause)
    }

    private func armCapacityTimer(_ pause: CapacityPause) {
        let sleepUntil = settings.sleepUntil
        capacityTimer = Task { [weak self] in
            do { try await sleepUntil(pause.until) } catch { return }
            await self?.capacityMayHaveChanged(fromTimer: true)
        }
    }

    /// After a job's readings were stored, or at a reset: advertises again when the pause changed.
    func capacityMayHaveChanged(fromTimer: Bool = false) async {
        let before = capacityPause
        followCapacity(config: reloadConfig() ?? basePipeline.config, fromTimer: fromTimer)
        if capacityPause != before { await connected() }
    }
}
