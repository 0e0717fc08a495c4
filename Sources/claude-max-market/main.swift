import ClaudeMaxMarketCLI

await ClaudeMaxMarket.runAsMain()
