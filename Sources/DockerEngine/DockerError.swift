/// An error from the Docker engine or from reaching it. Carries the engine's own message.
public struct DockerError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// Nothing answers on the socket.
        case unreachable
        /// `DOCKER_HOST` names something other than a local Unix socket.
        case unsupportedHost = "unsupported-host"
        /// The engine answered with an error status.
        case engine
        /// The thing asked for does not exist (engine 404).
        case notFound = "not-found"
        /// The engine reported an error inside a streamed answer (build, pull).
        case stream
        /// The engine's answer could not be understood.
        case malformed
        /// The engine refused because of a conflict (409), e.g. a name in use.
        case conflict
    }

    public let code: Code
    public let message: String
    /// The HTTP status, when the engine answered.
    public let status: Int?

    public init(_ code: Code, _ message: String, status: Int? = nil) {
        self.code = code
        self.message = message
        self.status = status
    }

    public var description: String { message }
}
