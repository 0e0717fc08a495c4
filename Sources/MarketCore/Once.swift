import Synchronization

/// True for the first caller of `claim` only: decides which of racing completions goes.
public final class Once: Sendable {
    private let claimed = Atomic(false)

    public init() {}

    public func claim() -> Bool { !claimed.exchange(true, ordering: .acquiringAndReleasing) }
}
