import Crypto
import Foundation
import MarketCrypto

/// Where a participant's files live: everything under `$CMM_HOME` when it is set, else the XDG
/// directories (`$XDG_CONFIG_HOME/claude-max-market`, `$XDG_DATA_HOME/claude-max-market`).
public struct ParticipantPaths: Sendable, Equatable {
    public static let appName = "claude-max-market"

    public let configDirectory: URL
    public let dataDirectory: URL

    public init(configDirectory: URL, dataDirectory: URL) {
        self.configDirectory = configDirectory
        self.dataDirectory = dataDirectory
    }

    public init(environment: [String: String]) {
        if let home = environment["CMM_HOME"], !home.isEmpty {
            let root = URL(fileURLWithPath: home, isDirectory: true)
            self.init(configDirectory: root, dataDirectory: root)
            return
        }
        let userHome = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        let configBase = environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "\(userHome)/.config"
        let dataBase = environment["XDG_DATA_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "\(userHome)/.local/share"
        self.init(
            configDirectory: URL(fileURLWithPath: configBase, isDirectory: true).appending(path: Self.appName),
            dataDirectory: URL(fileURLWithPath: dataBase, isDirectory: true).appending(path: Self.appName)
        )
    }

    public var configFile: URL { configDirectory.appending(path: "config.json") }
    public var databaseFile: URL { dataDirectory.appending(path: "state.sqlite") }
    public var keysDirectory: URL { dataDirectory.appending(path: "keys") }
    public var jobsDirectory: URL { dataDirectory.appending(path: "jobs") }
    public var runDirectory: URL { dataDirectory.appending(path: "run") }
    /// A requester's workspace jobs: the archives sent and the patches back.
    public var workspacesDirectory: URL { dataDirectory.appending(path: "workspaces") }
    /// Conversation transcripts of this participant's claude jobs (`ConversationFiles`).
    public var conversationsDirectory: URL { dataDirectory.appending(path: "conversations") }
    /// Names this installation on the containers it creates (the `owner` label): the first 16 hex
    /// digits of SHA-256 of the data directory's path. Two homes on one engine differ.
    public var ownerID: String {
        String(SHA256.hash(data: Data(dataDirectory.standardizedFileURL.path.utf8)).hexString.prefix(16))
    }

    /// Creates the directories with mode 0700 (and tightens them if they exist).
    public func prepare() throws {
        for directory in [configDirectory, dataDirectory, keysDirectory, jobsDirectory, runDirectory] {
            try FileManager.default.createDirectory(
                at: directory,
                withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700]
            )
            try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory.path)
        }
    }
}
