import MarketCore
import Testing

/// What a peer or a job wrote reaches a terminal as text it shows, never as what it obeys.
struct TerminalTextTests {
    static let osc52 = "\u{1B}]52;c;ZWNobyBwd25lZA==\u{07}"
    static let clearScreen = "\u{1B}[2J\u{1B}[H"
    static let c1CSI = "\u{9B}31m"
    static let rightToLeft = "invoice\u{202E}fdp.exe"

    @Test func escapeSequencesAreShownNotObeyed() {
        #expect(TerminalText.escaped(Self.osc52) == "\\u{1B}]52;c;ZWNobyBwd25lZA==\\u{07}")
        #expect(TerminalText.escaped(Self.clearScreen) == "\\u{1B}[2J\\u{1B}[H")
        #expect(TerminalText.escaped(Self.c1CSI) == "\\u{9B}31m")
        #expect(TerminalText.escaped(Self.rightToLeft) == "invoice\\u{202E}fdp.exe")
    }

    @Test func nothingEscapedIsLeftAndNothingIsDropped() {
        let hostile = Self.osc52 + Self.clearScreen + Self.c1CSI + Self.rightToLeft + "\r\u{7F}\u{0}"
        for shown in [TerminalText.escaped(hostile), TerminalText.line(hostile)] {
            #expect(!shown.unicodeScalars.contains { TerminalText.needsEscape($0, keepingLines: false) })
            // Every escaped scalar is named, so the count of markers is the count of scalars.
            #expect(shown.components(separatedBy: "\\u{").count - 1 == 9)
        }
    }

    @Test func linesAndTabsStayInTextAndAreEscapedInALine() {
        let text = "a\tb\nc"
        #expect(TerminalText.escaped(text) == text)
        #expect(TerminalText.line(text) == "a\\u{09}b\\u{0A}c")
        #expect(TerminalText.escaped("one\r\ntwo") == "one\\u{0D}\ntwo")
    }

    @Test func everyFormatCharacterAndTheSeparatorsAreEscaped() {
        let invisible: [Unicode.Scalar] = [
            "\u{AD}", "\u{61C}", "\u{200B}", "\u{200C}", "\u{200D}", "\u{200E}", "\u{200F}", "\u{202A}", "\u{202B}",
            "\u{202C}", "\u{202D}", "\u{202E}", "\u{2060}", "\u{2064}", "\u{2066}", "\u{2069}", "\u{FEFF}",
            "\u{E0001}", "\u{E0041}", "\u{2028}", "\u{2029}",
        ]
        for scalar in invisible {
            let hex = String(scalar.value, radix: 16, uppercase: true)
            #expect(TerminalText.escaped("x\(scalar)y") == "x\\u{\(hex)}y")
        }
    }

    @Test func ordinaryTextIsUnchanged() {
        let text = "Grüße, 世界 — naïve café 👋🏽 ∑ x² ‘quoted’ \\u{1B} as typed"
        #expect(TerminalText.escaped(text) == text)
        #expect(TerminalText.line(text) == text)
    }
}
