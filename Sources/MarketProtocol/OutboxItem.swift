/// A message waiting for the market's answer: kept until the market acknowledges its id, and
/// resent with the same id (the market acts once per id) after a reconnect or a restart.
public struct OutboxItem: Sendable, Equatable {
    public var id: String
    public var type: MessageType
    /// The body as the JSON text that is signed when it is (re)sent.
    public var body: String
    public var createdMs: Int64
    /// Past this time the message is never sent (an offer or a bid that expired).
    public var expiresMs: Int64?

    public init(id: String, type: MessageType, body: String, createdMs: Int64, expiresMs: Int64? = nil) {
        self.id = id
        self.type = type
        self.body = body
        self.createdMs = createdMs
        self.expiresMs = expiresMs
    }
}
