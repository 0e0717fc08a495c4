import ArgumentParser
import MarketCore

// Arguments that are types: each is checked when the command line is parsed, so that a bad value
// stops the command with a usage error (exit 64) naming the option, the value and what is allowed,
// before it reads a file or opens a connection.

/// A duration: `500ms`, `90s`, `5m`, `24h`, `7d`. An option of this type says its default in its
/// help text: the parser shows defaults only for options it parses itself.
package struct DurationArgument: Sendable, Equatable, CustomStringConvertible {
    package enum Unit: String, Sendable, CaseIterable {
        case ms, s, m, h, d

        var milliseconds: Int64 {
            switch self {
            case .ms: 1
            case .s: 1000
            case .m: 60_000
            case .h: 3_600_000
            case .d: 86_400_000
            }
        }
    }

    package let milliseconds: Int64
    package let description: String

    /// A default written in the code, e.g. `DurationArgument(90, .s)`.
    package init(_ value: Int64, _ unit: Unit) {
        milliseconds = value * unit.milliseconds
        description = "\(value)\(unit.rawValue)"
    }

    /// For `@Option(transform:)`: the reason reaches the usage error.
    package static func argument(_ text: String) throws -> DurationArgument {
        // Longest suffix first: "5ms" is milliseconds, not "5m" and an "s".
        for unit in [Unit.ms, .s, .m, .h, .d] where text.hasSuffix(unit.rawValue) {
            if let value = Int64(text.dropLast(unit.rawValue.count)), value > 0,
                value <= Int64.max / unit.milliseconds / 1000
            {
                return DurationArgument(value, unit)
            }
        }
        throw ValidationError("not a duration: use a positive whole number with ms, s, m, h or d (90s, 24h)")
    }
}

/// An amount of credits (a price, a mint): whole credits with up to six decimals (`5`, `0.25`), above zero.
package struct CreditsArgument: Sendable, CustomStringConvertible {
    package let credits: Credits
    package var micro: Int64 { credits.micro }
    package var description: String { credits.description }

    package static func argument(_ text: String) throws -> CreditsArgument {
        let credits: Credits
        do { credits = try Credits(parsing: text) } catch { throw ValidationError("\(error)") }
        guard credits.micro > 0 else {
            throw ValidationError("must be above zero (whole credits, up to six decimals)")
        }
        return CreditsArgument(credits: credits)
    }
}

/// A peer id: 32 characters of base32.
extension PeerID {
    package static func argument(_ text: String) throws -> PeerID {
        do { return try PeerID(validating: text) } catch { throw ValidationError("\(error)") }
    }
}

/// `--url`, for every command that talks to a market.
package struct MarketURLOption: ParsableArguments {
    @Option(help: "The market's WebSocket URL (default: the market.url config key).", transform: MarketURL.argument)
    package var url: MarketURL?

    package init() {}
}

/// `--json`, for every command that prints one answer.
package struct JSONOutput: ParsableArguments {
    @Flag(help: "Print JSON.") package var json = false

    package init() {}
}
