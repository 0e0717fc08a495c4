import Foundation
import MarketCore

/// A value of a closed set as a peer sends it: one this build knows, or one an older or newer peer
/// sent, kept as its text rather than failing the frame. Decoded once, where the frame comes in;
/// on the wire it is the plain string.
public enum WireEnum<Known: RawRepresentable & Sendable & Hashable>: TolerantText
where Known.RawValue == String {
    case known(Known)
    case unknown(String)

    public init(_ known: Known) { self = .known(known) }

    public init(rawValue: String) {
        self = Known(rawValue: rawValue).map { .known($0) } ?? .unknown(rawValue)
    }

    public var rawValue: String {
        switch self {
        case .known(let value): value.rawValue
        case .unknown(let text): text
        }
    }

    public var known: Known? {
        if case .known(let value) = self { value } else { nil }
    }

}

/// What an `ack` says the message left behind: a task's state, or an offer's.
public enum AckState: TolerantText {
    case task(TaskState)
    /// `offer.advertise`: the offer stands.
    case advertised
    /// `offer.withdraw`: the offer is gone, or there was none.
    case withdrawn
    case noOffer
    /// A state this build does not know (a newer market).
    case unknown(String)

    public init(rawValue: String) {
        switch rawValue {
        case "advertised": self = .advertised
        case "withdrawn": self = .withdrawn
        case "none": self = .noOffer
        default: self = TaskState(rawValue: rawValue).map { .task($0) } ?? .unknown(rawValue)
        }
    }

    public var rawValue: String {
        switch self {
        case .task(let state): state.rawValue
        case .advertised: "advertised"
        case .withdrawn: "withdrawn"
        case .noOffer: "none"
        case .unknown(let text): text
        }
    }

}

/// The fields that say what a frame answers or concerns, read from its body once instead of
/// searching its text.
public struct FrameSubject: Decodable, Sendable, Equatable {
    public var ref: String?
    public var taskId: String?

    public init(ref: String? = nil, taskId: String? = nil) {
        self.ref = ref
        self.taskId = taskId
    }
}

extension Envelope {
    /// `ref` and `taskId` of the body; empty when the body is not a JSON object.
    public var subject: FrameSubject {
        (try? JSONDecoder().decode(FrameSubject.self, from: Data(body.utf8))) ?? FrameSubject()
    }

    /// True for the market's answer (`ack`, `pong`, `error`) to message `ref`.
    public func refersTo(_ ref: String) -> Bool {
        guard let type = messageType, [.ack, .error, .pong].contains(type) else { return false }
        return subject.ref == ref
    }
}

extension Account: RawRepresentable {
    public init?(rawValue: String) { self.init(rawValue) }
    public var rawValue: String { description }
}
