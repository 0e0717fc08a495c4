import CoreMetrics
import Prometheus
import Synchronization

/// The server's metrics, recorded through swift-metrics into its own Prometheus registry (not
/// the process-wide one, so several servers in one process keep separate counts).
final class MarketMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    private let counters = Mutex<[String: CoreMetrics.Counter]>([:])
    private let connectionGauge: CoreMetrics.Gauge
    private let frameTimer: CoreMetrics.Timer
    private let commitGauges: (writes: CoreMetrics.Gauge, transactions: CoreMetrics.Gauge)

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .seconds(1),
        ]
        self.factory = factory
        connectionGauge = CoreMetrics.Gauge(label: "cmm_connections", factory: factory)
        frameTimer = CoreMetrics.Timer(label: "cmm_frame_seconds", factory: factory)
        commitGauges = (
            CoreMetrics.Gauge(label: "cmm_committed_writes", factory: factory),
            CoreMetrics.Gauge(label: "cmm_commit_transactions", factory: factory)
        )
    }

    private func count(_ label: String, _ dimensions: [(String, String)]) {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        let counter = counters.withLock { cache in
            if let existing = cache[key] { return existing }
            let made = CoreMetrics.Counter(label: label, dimensions: dimensions, factory: factory)
            cache[key] = made
            return made
        }
        counter.increment()
    }

    func frame(_ type: String) { count("cmm_frames_total", [("type", type)]) }
    func error(_ code: String) { count("cmm_errors_total", [("code", code)]) }
    func matched() { count("cmm_matches_total", []) }
    func settled(_ state: String) { count("cmm_settlements_total", [("state", state)]) }
    func connections(_ value: Int) { connectionGauge.record(value) }
    func frameDuration(nanoseconds: Int64) { frameTimer.recordNanoseconds(nanoseconds) }
    /// Writes committed since the start and the transactions that carried them (their ratio is
    /// the group commit's batch size).
    func committed(_ counts: (writes: Int, transactions: Int)) {
        commitGauges.writes.record(counts.writes)
        commitGauges.transactions.record(counts.transactions)
    }

    func exposition() -> String { registry.emitToString() }
}
