/// Text that a peer or a job wrote, made safe to show on a person's terminal. Such text may
/// carry what a terminal obeys instead of showing: escape sequences (a window title, an OSC 52
/// write to the clipboard, CSI 2J clearing the screen), C1 controls (U+009B is an 8-bit CSI),
/// or bidi and invisible format characters (U+202E shows a name backwards). Each such scalar is
/// shown as `\u{HEX}` (uppercase hex, at least two digits: `\u{1B}`, `\u{9B}`, `\u{202E}`), so
/// that a person sees something was there and what it was; nothing is dropped. An escape
/// sequence's remaining characters are printable and stay as they are once its ESC is shown.
///
/// Escaped: C0 controls but newline and tab (and those too in `line`), DEL and C1, every
/// format character (Unicode category Cf: U+00AD, U+061C, U+200B–U+200F, U+202A–U+202E,
/// U+2060–U+2064, U+2066–U+2069, U+FEFF, the tags …), and the line and paragraph separators
/// U+2028 and U+2029. `--json` output is not passed through here: it keeps the exact text,
/// JSON-escaped.
public enum TerminalText {
    /// Text of many lines (a job's output, a transcript, a message of ours that quotes a peer):
    /// newlines and tabs are kept.
    public static func escaped(_ text: String) -> String {
        escape(text, keepingLines: true)
    }

    /// Text shown inside one line of ours (a file name, a reason, a peer id): a newline or tab
    /// in it is escaped too, so that it cannot start a line that looks like one of ours.
    public static func line(_ text: String) -> String {
        escape(text, keepingLines: false)
    }

    /// Whether `scalar` is escaped (with `keepingLines`, newline and tab are not).
    public static func needsEscape(_ scalar: Unicode.Scalar, keepingLines: Bool) -> Bool {
        switch scalar.value {
        case 0x0A, 0x09: return !keepingLines
        case 0x20..<0x7F: return false
        case 0x00..<0x20, 0x7F...0x9F, 0x2028, 0x2029: return true
        default: return scalar.properties.generalCategory == .format
        }
    }

    private static func escape(_ text: String, keepingLines: Bool) -> String {
        // Most text has nothing to escape: it goes out as it is, without a copy.
        guard text.unicodeScalars.contains(where: { needsEscape($0, keepingLines: keepingLines) }) else { return text }
        var shown = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            if needsEscape(scalar, keepingLines: keepingLines) {
                let hex = String(scalar.value, radix: 16, uppercase: true)
                shown.append(contentsOf: "\\u{\(hex.count < 2 ? "0" + hex : hex)}".unicodeScalars)
            } else {
                shown.append(scalar)
            }
        }
        return String(shown)
    }
}
