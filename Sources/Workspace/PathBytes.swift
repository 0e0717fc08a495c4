/// Paths as the kernel sees them: bytes, split on the byte `/`, compared byte for byte.
///
/// Swift's `String` splits and compares by grapheme cluster and canonical equivalence: a `/`
/// followed by a combining mark, or after a "prepend" character, is not a `Character` of its
/// own, and `é` precomposed equals `e` with a combining accent. Neither holds on a filesystem,
/// so a path from someone else is never split, searched or keyed as a `String`.
enum PathBytes {
    static let slash = UInt8(ascii: "/")

    /// The components, empty ones included ("a//b" has three).
    static func components(_ path: String) -> [String] {
        path.utf8.split(separator: slash, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The directory a path lies in; nil at the top.
    static func parent(_ path: String) -> String? {
        guard let index = path.utf8.lastIndex(of: slash) else { return nil }
        return String(decoding: path.utf8[..<index], as: UTF8.self)
    }

    /// "a", "a/b" for "a/b/c": the directories on the way, shortest first.
    static func ancestors(of path: String) -> [String] {
        var ancestors: [String] = []
        let bytes = Array(path.utf8)
        for (index, byte) in bytes.enumerated() where byte == slash {
            ancestors.append(String(decoding: bytes[..<index], as: UTF8.self))
        }
        return ancestors
    }

    /// A key that tells apart what the filesystem tells apart.
    static func key(_ path: String) -> [UInt8] { Array(path.utf8) }

    static func isDot(_ component: String) -> Bool { component.utf8.elementsEqual(".".utf8) }
    static func isDotDot(_ component: String) -> Bool { component.utf8.elementsEqual("..".utf8) }

    /// Whether `path` starts with the bytes of `prefix`.
    static func hasPrefix(_ path: String, _ prefix: String) -> Bool { path.utf8.starts(with: prefix.utf8) }

    /// A component that is `.git` to git on any filesystem a requester may use: any case, with
    /// the code points HFS+ ignores, or with the trailing dots and spaces, or the short name,
    /// that NTFS takes for it (git's own is_hfs_dotgit and is_ntfs_dotgit).
    static func isDotGit(_ component: String) -> Bool {
        let ignorable: Set<UInt32> = [
            0x200C, 0x200D, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x206A, 0x206B, 0x206C, 0x206D,
            0x206E, 0x206F, 0xFEFF,
        ]
        var scalars = component.unicodeScalars.filter { !ignorable.contains($0.value) }
        while let last = scalars.last, last == "." || last == " " { scalars.removeLast() }
        let name = String(String.UnicodeScalarView(scalars)).lowercased()
        return name == ".git" || name == "git~1"
    }
}
