/// The version of this tool: it tags the runner image and is recorded in labels and audit entries.
public enum ToolVersion {
    public static let current = "0.1.0"
}
