import ArgumentParser
import Foundation
import MarketCore
import ParticipantCLI

/// The root command. Each subcommand lives in a file named after it: the participant's commands in
/// `ParticipantCLI`, which links no part of the market server; `market serve`, `verify`, `mint`
/// and `resolve`, which open the books, here.
public struct ClaudeMaxMarket: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "claude-max-market",
        abstract: "Share your own Claude Code capacity on a market, safely and on your terms.",
        discussion: """
            State lives under $CMM_HOME when set, else $XDG_CONFIG_HOME/claude-max-market and \
            $XDG_DATA_HOME/claude-max-market. Every command that changes state writes an audit entry.
            """,
        version: ToolVersion.current,
        subcommands: ParticipantCommands.beforeMarket + [MarketCommand.self] + ParticipantCommands.afterMarket
    )

    public init() {}

    /// Parses and runs a command. Called explicitly because, from another module, `main()`
    /// resolves to ArgumentParser's synchronous overload, which refuses async commands.
    public static func runAsMain(_ arguments: [String]? = nil) async {
        await CommandMain.run(Self.self, arguments: arguments)
    }
}
