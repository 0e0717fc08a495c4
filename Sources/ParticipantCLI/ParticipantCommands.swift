import ArgumentParser

/// The participant's commands, in the order `--help` lists them; the root command (in
/// `ClaudeMaxMarketCLI`) puts the `market` group between the two halves.
package enum ParticipantCommands {
    package static let beforeMarket: [any ParsableCommand.Type] = [
        ConfigCommand.self, TermsCommand.self, OptInCommand.self, OptOutCommand.self, LimitsCommand.self,
        StatusCommand.self, AuditCommand.self, ComplianceCheckCommand.self, KeysCommand.self, EncryptCommand.self,
        DecryptCommand.self, DockerCommand.self, DockerBuildAlias.self, DockerPullAlias.self, HealthCommand.self,
        CleanCommand.self, ExecuteCommand.self, UsageCommand.self, LogsCommand.self, LoginCommand.self,
    ]

    package static let afterMarket: [any ParsableCommand.Type] = [
        AdvertiseCommand.self, WithdrawCommand.self, BidCommand.self, ProvideCommand.self, SubmitCommand.self,
        TasksCommand.self, ResultCommand.self, CancelCommand.self, AcceptCommand.self, DisputeCommand.self,
        BalanceCommand.self, ReputationCommand.self, DemoCommand.self,
    ]

    /// `market status` and `market sync`: a participant's view of a market.
    package static let market: [any ParsableCommand.Type] = [MarketStatusCommand.self, MarketSyncCommand.self]
}
