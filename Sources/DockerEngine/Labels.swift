import Foundation

/// The labels on everything this tool creates. Cleanup selects by them and touches nothing else.
public enum Labels {
    public static let prefix = "io.claude-max-market."
    /// Present (value "true") on every container and image the tool makes.
    public static let managed = prefix + "managed"
    /// What it is. Images: `runner-image`, `test-image`; containers: `job`, `pool`, `login`, `test`.
    public static let kind = prefix + "kind"
    /// Kinds only containers carry. A container inherits its image's labels, so a container
    /// someone else made from our image has `managed` too, but an image kind: never ours.
    /// `check`: created (never started) by the sandbox check of `health` and `compliance-check`.
    public static let containerKinds: Set<String> = ["job", "pool", "login", "test", "check"]
    public static let job = prefix + "job"
    public static let createdBy = prefix + "created-by"
    /// Which installation (state directory) made a container: `clean` removes only its own, so
    /// two homes sharing one engine never remove each other's containers mid-job.
    public static let owner = prefix + "owner"

    public static func make(kind: String, job: String? = nil, owner: String? = nil, version: String) -> [String: String]
    {
        var labels = [managed: "true", self.kind: kind, createdBy: "claude-max-market/\(version)"]
        if let job { labels[self.job] = job }
        if let owner { labels[self.owner] = owner }
        return labels
    }

    /// True when `labels` mark something as the tool's own.
    public static func isManaged(_ labels: [String: String]?) -> Bool {
        labels?[managed] == "true"
    }

    /// True for a container the tool itself created (not one made by someone from its image).
    public static func isManagedContainer(_ labels: [String: String]?) -> Bool {
        isManaged(labels) && containerKinds.contains(labels?[kind] ?? "")
    }

    /// Engine `filters` JSON selecting by label (`key` or `key=value`).
    static func filter(_ labels: [String], extra: [String: [String]] = [:]) -> String {
        var filters = extra
        if !labels.isEmpty { filters["label"] = labels }
        let encoded = try! JSONSerialization.data(withJSONObject: filters, options: [.sortedKeys])
        return String(decoding: encoded, as: UTF8.self)
    }
}
