import ArgumentParser
import Foundation
import Participant

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Show and change configuration (defaults < config.json < CMM_* environment < flags).",
        discussion: """
            Every key has a type, a default and an allowed range; `--list` shows them with the \
            layer each value came from. A bad value or an unknown key is refused and nothing is \
            written. Environment variables are named CMM_ plus the key in capitals with dots as \
            underscores (limits.dailyTasks → CMM_LIMITS_DAILYTASKS).
            """
    )

    @Flag(name: .long, help: "List every key with its value, layer, default and allowed values.")
    var list = false
    @Option(name: .long, help: ArgumentHelp("Print one key's effective value.", valueName: "KEY"))
    var get: String?
    @Option(name: .long, help: ArgumentHelp("Set KEY=VALUE in config.json (repeatable).", valueName: "KEY=VALUE"))
    var set: [String] = []
    @Option(name: .long, help: ArgumentHelp("Remove KEY from config.json (repeatable).", valueName: "KEY"))
    var unset: [String] = []
    @Option(
        name: .long, help: ArgumentHelp("Write config.json's settings to FILE ('-' for stdout).", valueName: "FILE"))
    var export: String?
    @Option(
        name: .customLong("import"),
        help: ArgumentHelp("Replace config.json with FILE, after validating it.", valueName: "FILE"))
    var importFile: String?
    @Flag(name: .long, help: "Remove every setting from config.json (back to defaults).")
    var reset = false
    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func validate() throws {
        let actions = [list, get != nil, !set.isEmpty, !unset.isEmpty, export != nil, importFile != nil, reset]
        guard actions.filter({ $0 }).count <= 1 else {
            throw ValidationError("use one of --list, --get, --set, --unset, --export, --import, --reset at a time")
        }
    }

    func run() async throws {
        let context = CommandContext()
        if let name = get {
            guard let key = ConfigKey.named(name) else { throw ConfigError.unknownKey(name, source: "config --get") }
            let config = try context.config()
            if json {
                try Output.json(ConfigListing.Item(entry: config.entries.first { $0.key == key }!))
            } else {
                Output.line(config[key].description)
            }
        } else if !set.isEmpty {
            let assignments = try set.map(ConfigStore.parseAssignment)
            _ = try context.configStore.set(assignments)
            try audit(context, kind: "config.set", details: Dictionary(assignments.map { ($0.key, $0.value) }) { $1 })
            if !json { Output.line("set \(assignments.map { "\($0.key)=\($0.value)" }.joined(separator: ", "))") }
        } else if !unset.isEmpty {
            try context.configStore.unset(unset)
            try audit(context, kind: "config.unset", details: ["keys": unset.joined(separator: ",")])
            if !json { Output.line("unset \(unset.joined(separator: ", "))") }
        } else if let path = export {
            try Output.write(context.configStore.exportData(), to: path)
            if path != "-" { Output.note("exported config.json settings to \(path)") }
        } else if let path = importFile {
            let data: Data
            do {
                data =
                    path == "-"
                    ? FileHandle.standardInput.readDataToEndOfFile() : try Data(contentsOf: URL(fileURLWithPath: path))
            } catch {
                throw CLIError("cannot read \(path): \(error.localizedDescription)")
            }
            let values = try context.configStore.importData(data, source: path)
            try audit(
                context, kind: "config.import",
                details: ["source": path, "keys": values.keys.sorted().joined(separator: ",")])
            if !json { Output.line("imported \(values.count) settings from \(path)") }
        } else if reset {
            try context.configStore.reset()
            try audit(context, kind: "config.reset", details: [:])
            if !json {
                Output.line("config.json reset: every key is back to its default (environment and flags still apply)")
            }
        } else {
            let config = try context.config()
            let listing = ConfigListing(items: config.entries.map(ConfigListing.Item.init(entry:)))
            if json {
                try Output.json(listing)
            } else {
                Output.line(
                    Output.table(
                        ["KEY", "VALUE", "FROM", "DEFAULT", "ALLOWED"],
                        listing.items.map { [$0.key, $0.value, $0.layer, $0.defaultValue, $0.allowed] }))
            }
        }
    }

    private func audit(_ context: CommandContext, kind: String, details: [String: String]) throws {
        try context.database().audit(actor: context.actor, kind: kind, details: details, at: context.now)
    }
}

struct ConfigListing: Codable {
    struct Item: Codable {
        var key: String
        var value: String
        var layer: String
        var defaultValue: String
        var allowed: String
        var description: String

        init(entry: ResolvedConfig.Entry) {
            key = entry.key.name
            value = entry.value.description
            layer = entry.layer.rawValue
            defaultValue = entry.key.defaultValue.description
            allowed = entry.key.allowed
            description = entry.key.summary
        }
    }

    var items: [Item]
}
