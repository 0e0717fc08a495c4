import Logging

extension MarketDatabaseLocation {
    /// Opens the books here, runs `body`, and closes them, also when `body` throws.
    public func withStore<T>(logger: Logger, _ body: (any MarketStore) async throws -> T) async throws -> T {
        let store: any MarketStore =
            switch self {
            case .sqlite(let path): try SQLiteMarketStore(path: path)
            case .postgres(let url): try await PostgresMarketStore.connect(url: url, logger: logger)
            }
        do {
            let result = try await body(store)
            try await store.close()
            return result
        } catch {
            try? await store.close()
            throw error
        }
    }
}
