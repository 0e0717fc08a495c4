import Foundation

/// A TCP socket bound to 127.0.0.1 on a port the kernel picks.
public struct LoopbackSocket: ~Copyable {
    public let descriptor: Int32
    public let port: Int

    /// Binds; with `listening`, also listens (the kernel then completes connections on its own,
    /// and nothing ever answers them).
    public init(listening: Bool = false) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && (!listening || listen(fd, 8) == 0) && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            throw CLIRunnerError(description: "cannot bind a socket on 127.0.0.1")
        }
        descriptor = fd
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit { close(descriptor) }

    /// A port that was free a moment ago (for a server that binds it itself).
    public static func freePort() throws -> Int { try LoopbackSocket().port }
}
