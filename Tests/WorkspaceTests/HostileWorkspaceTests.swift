import Foundation
import TestSupport
import Testing

@testable import Workspace

/// The reproductions of issue #32's probe, as tests: archives and patches that crashed the
/// readers, links that climb out through other links, patches that overwrote newer edits or
/// could not apply what `git apply` applies.
struct HostileWorkspaceTests {
    static let zero = GitObjects.zeroID

    func archive(_ blocks: [[UInt8]]) -> Data { Data(blocks.joined()) + Data(count: 1024) }

    func header(_ name: String, type: Character = "0", size: Int = 0, link: String = "") -> [UInt8] {
        TarWriter.block(name: Array(name.utf8), type: type.asciiValue!, mode: 0o644, size: size, link: Array(link.utf8))
    }

    func pax(_ record: String) -> [UInt8] {
        let body = Array(record.utf8)
        return header("pax", type: "x", size: body.count) + body
            + [UInt8](repeating: 0, count: (512 - body.count % 512) % 512)
    }

    @Test func paxRecordsThatOverflowOrLieAreRefused() throws {
        for record in [
            "9223372036854775807 path=x\n", "3 a\n", "2 \n", "-5 path=x\n", "99999999999999999999999 path=x\n",
            "0 path=x\n", "12 path=x", "7 path=x\n",
        ] {
            let data = archive([pax(record), header("x")])
            for lenient in [false, true] {
                #expect(throws: WorkspaceError.self, "\(record.debugDescription), lenient \(lenient)") {
                    try WorkspaceTree.read(tar: data, limits: WorkspaceLimits(), lenient: lenient)
                }
            }
        }
        let good = archive([pax("18 path=long/name\n"), header("x")])
        #expect(try WorkspaceTree.read(tar: good, limits: WorkspaceLimits()).tree.files.map(\.path) == ["long/name"])
    }

    @Test func patchLinesThatCrashedTheParserAreRefused() throws {
        let modified = GitObjects.blobID(Data("x\n".utf8))
        let cases = [
            "diff --git a/a.txt b/a.txt\nindex \n",
            "diff --git a/a.txt b/a.txt\nindex \(Self.zero)..\(Self.zero) 100644\n@@ - +1 @@\n+x\n",
            "diff --git a/\n",
            "diff --git a/a b/\n",
            "diff --git a/a.txt b/a.txt\nnew file mode 100644\nindex \(Self.zero)..\(modified)\nGIT binary patch\nliteral 9223372036854775807\nzcmV\n\n",
            "diff --git a/a.txt b/a.txt\nindex \(modified)..\(Self.zero) 100644\n@@ --9223372036854775808,1 +1 @@\n-x\n+y\n",
            "diff --git a/a.txt b/a.txt\nindex \(modified)..\(Self.zero) 100644\n@@ -1,99999999999 +1 @@\n-x\n",
            "diff --git a/a.txt b/a.txt\nindex \(modified)..\(Self.zero) 100644\n@@ -1 +1 @@\n-x\n+y\n+z\n",
            "diff --git a/a.txt b/a.txt\nindex \(modified)..\(Self.zero) 100644\n@@ -1,3 +1 @@\n-x\n",
        ]
        for text in cases {
            let data = Data((WorkspacePatch.headerPrefix + "sha256:0\n" + text).utf8)
            #expect(throws: WorkspaceError.self, "\(text.debugDescription)") { try WorkspacePatch(parsing: data) }
            #expect(throws: WorkspaceError.self) {
                try WorkspacePatch(parsing: data).apply(to: TemporaryDirectory().url)
            }
        }
        #expect(throws: WorkspaceError.self) {
            try GitObjects.unzlibStored(Data([0x78, 0x01, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 1]), expectedSize: Int.max)
        }
    }

    // MARK: Links, resolved as the kernel would

    func entries(files: [String] = [], links: [String: String]) -> [WorkspaceEntry] {
        var directories = Set<String>()
        for path in files + Array(links.keys) { directories.formUnion(PathBytes.ancestors(of: path)) }
        return directories.map { WorkspaceEntry(path: $0, kind: .directory) }
            + files.map { WorkspaceEntry(path: $0, kind: .file(Data("f\n".utf8))) }
            + links.map { WorkspaceEntry(path: $0.key, kind: .symlink($0.value)) }
    }

    func refusal(_ links: [String: String], files: [String] = ["a/file"]) -> String? {
        do {
            _ = try WorkspaceTree(entries: entries(files: files, links: links))
            return nil
        } catch {
            return error.message
        }
    }

    @Test func linksThatClimbOutThroughOtherLinksAreRefused() throws {
        // Each stays inside read as text, and leaves the root once its links are followed.
        #expect(refusal(["a/up": "..", "a/esc": "up/../.."])?.contains("a/esc") == true)
        let eight = "up/" + Array(repeating: "..", count: 8).joined(separator: "/")
        #expect(refusal(["a/b/c/d/e/f/g/up": "../../../../../..", "a/b/c/d/e/f/g/h": eight]) != nil)
        #expect(refusal(["a/up": ".."]) == nil)
        #expect(refusal(["a/up": "..", "a/in": "up/a/file"]) == nil)
        // A loop, and a link into .git.
        #expect(refusal(["a/x": "y", "a/y": "x"])?.contains("loop") == true)
        #expect(refusal(["a/self": "self/x"])?.contains("loop") == true)
        #expect(refusal(["g": ".git/config"])?.contains(".git") == true)
        #expect(refusal(["a/up": "..", "g": "a/up/.GIT/hooks"])?.contains(".git") == true)
    }

    @Test func aChainOfFortyLinksResolvesAndFortyOneDoesNot() throws {
        func chain(_ count: Int) -> [String: String] {
            var links: [String: String] = [:]
            for index in 1..<count { links["l\(index)"] = "l\(index + 1)" }
            links["l\(count)"] = "a/file"
            return links
        }
        #expect(refusal(chain(40)) == nil)
        #expect(refusal(chain(41))?.contains("more than 40 links") == true)
        // Resolution is linear: twenty thousand links, each through the last, in one tree.
        var long: [String: String] = ["c0": "a"]
        for index in 1..<20_000 { long["c\(index)"] = index % 39 == 0 ? "a/file" : "c\(index - 1)" }
        #expect(refusal(long) == nil)
    }

    @Test func lenientReadingPackingAndTheWorkDirectoryDropWhatClimbsOut() throws {
        let data = archive([
            header("a", type: "5"), header("a/up", type: "2", link: ".."),
            header("a/esc", type: "2", link: "up/../.."), header("a/ok", type: "2", link: "up/a"),
        ])
        #expect(throws: WorkspaceError.self) { try WorkspaceTree.read(tar: data, limits: WorkspaceLimits()) }
        let (tree, skipped) = try WorkspaceTree.read(tar: data, limits: WorkspaceLimits(), lenient: true)
        #expect(tree.entries.map(\.path) == ["a", "a/ok", "a/up"])
        #expect(skipped.map(\.path) == ["a/esc"])

        let dir = TemporaryDirectory("cmm-links")
        try FileManager.default.createDirectory(at: dir.file("a"), withIntermediateDirectories: true)
        symlink("..", dir.file("a/up").path)
        symlink("up/../..", dir.file("a/esc").path)
        symlink("esc", dir.file("a/via-esc").path)
        let packed = try WorkspacePacker(options: .init(includeIgnored: true)).pack(dir.url)
        #expect(packed.tree.entries.map(\.path) == ["a", "a/up"])
        #expect(Set(packed.leftOut.map(\.path)) == ["a/esc", "a/via-esc"])

        let work = try WorkspaceTree(entries: entries(files: ["work/f"], links: ["work/up": "..", "work/in": "f"]))
        let (below, dropped) = work.subtree(under: "work")
        #expect(below.entries.map(\.path) == ["f", "in"])
        #expect(dropped.map(\.path) == ["up"])
    }

    // MARK: Applying

    func patch(_ text: String) -> WorkspacePatch {
        WorkspacePatch(data: Data((WorkspacePatch.headerPrefix + "sha256:0\n" + text).utf8), baseHash: "", files: [])
    }

    /// Every path below `dir`, links not followed.
    func snapshot(_ dir: TemporaryDirectory) -> [String] {
        var paths: [String] = []
        func visit(_ relative: String) {
            let absolute = relative.isEmpty ? dir.path : dir.path + "/" + relative
            for name in (try? FileManager.default.contentsOfDirectory(atPath: absolute)) ?? [] {
                let path = relative.isEmpty ? name : relative + "/" + name
                paths.append(path)
                var info = stat()
                if lstat(dir.path + "/" + path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR { visit(path) }
            }
        }
        visit("")
        return paths.sorted()
    }

    @Test func aLinkMadeByOneEntryAndClimbedByAnotherIsRefused() throws {
        let dir = TemporaryDirectory("cmm-apply-links")
        try FileManager.default.createDirectory(at: dir.file("a"), withIntermediateDirectories: true)
        func link(_ path: String, _ target: String) -> String {
            "diff --git a/\(path) b/\(path)\nnew file mode 120000\nindex \(Self.zero)..\(GitObjects.blobID(Data(target.utf8)))\n--- /dev/null\n+++ b/\(path)\n@@ -0,0 +1 @@\n+\(target)\n\\ No newline at end of file\n"
        }
        #expect { try patch(link("a/up", "..") + link("a/esc", "up/../..")).apply(to: dir.url) } throws: {
            ($0 as? WorkspaceError)?.code == .conflict && "\($0)".contains("a/esc")
        }
        #expect(snapshot(dir) == ["a"])
        // The same climb through a link the directory already has.
        symlink("..", dir.file("a/up").path)
        #expect(throws: WorkspaceError.self) { try patch(link("a/esc", "up/../..")).apply(to: dir.url) }
        #expect(throws: WorkspaceError.self) { try patch(link("hooks", "a/up/.git/hooks")).apply(to: dir.url) }
        #expect(snapshot(dir) == ["a", "a/up"])
        let applied = try patch(link("a/in", "up/a")).apply(to: dir.url)
        #expect(applied.written == ["a/in"])
    }

    @Test func aChangeThatDoesNotNameItsOldBlobIsRefused() throws {
        let dir = TemporaryDirectory("cmm-apply-index")
        try Data("edited by the requester\n".utf8).write(to: dir.file("a.txt"))
        let literal = GitObjects.base85Lines(GitObjects.zlibStored(Data("job's\n".utf8))).joined(separator: "\n")
        for text in [
            "diff --git a/a.txt b/a.txt\nGIT binary patch\nliteral 6\n\(literal)\n\n",
            "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-edited by the requester\n+job's\n",
            "diff --git a/a.txt b/a.txt\ndeleted file mode 100644\n",
        ] {
            #expect(throws: WorkspaceError.self) { try patch(text).apply(to: dir.url) }
        }
        #expect(try Data(contentsOf: dir.file("a.txt")) == Data("edited by the requester\n".utf8))
    }

    @Test func aLinkAndAFileBelowItInOnePatchAreRefusedLeavingNothing() throws {
        let dir = TemporaryDirectory("cmm-apply-below")
        let text =
            "diff --git a/d b/d\nnew file mode 120000\nindex \(Self.zero)..\(GitObjects.blobID(Data("x".utf8)))\n@@ -0,0 +1 @@\n+x\n\\ No newline at end of file\n"
            + "diff --git a/d/f b/d/f\nnew file mode 100644\nindex \(Self.zero)..\(GitObjects.blobID(Data("f\n".utf8)))\n@@ -0,0 +1 @@\n+f\n"
        #expect { try patch(text).apply(to: dir.url) } throws: { ($0 as? WorkspaceError)?.code == .conflict }
        #expect(snapshot(dir).isEmpty)
    }

    func write(_ tree: WorkspaceTree, into dir: TemporaryDirectory) throws {
        try tree.write(into: dir.url)
    }

    func tree(files: [String: String], links: [String: String] = [:]) throws -> WorkspaceTree {
        var entries = entries(files: [], links: links)
        var directories = Set(entries.filter { $0.kind == .directory }.map(\.path))
        for path in files.keys {
            for directory in PathBytes.ancestors(of: path) where directories.insert(directory).inserted {
                entries.append(WorkspaceEntry(path: directory, kind: .directory))
            }
            entries.append(WorkspaceEntry(path: path, kind: .file(Data(files[path]!.utf8))))
        }
        return try WorkspaceTree(entries: entries)
    }

    @Test(
        arguments: [
            ("file to link", ["a": "x\n", "b": "y\n"], [:], ["b": "y\n"], ["a": "b"]),
            ("link to file", ["b": "y\n"], ["a": "b"], ["a": "now a file\n", "b": "y\n"], [:]),
            ("file to directory", ["a": "x\n"], [:], ["a/inside": "in\n"], [:]),
            (
                "directory to file", ["a/one": "1\n", "a/deeper/two": "2\n", "keep": "k\n"], [:],
                ["a": "file\n", "keep": "k\n"], [:]
            ),
            ("link to directory", ["b": "y\n"], ["a": "b"], ["a/c": "c\n", "b": "y\n"], [:]),
        ] as [(String, [String: String], [String: String], [String: String], [String: String])])
    func changesOfKindApplyAsGitApplyApplies(
        name: String, beforeFiles: [String: String], beforeLinks: [String: String],
        afterFiles: [String: String], afterLinks: [String: String]
    ) throws {
        let base = try tree(files: beforeFiles, links: beforeLinks)
        let result = try tree(files: afterFiles, links: afterLinks)
        let made = WorkspacePatch.make(base: base, result: result)
        var trees: [WorkspaceTree] = []
        for useGit in [false, true] {
            let dir = TemporaryDirectory("cmm-kinds")
            try write(base, into: dir)
            if useGit {
                let file = dir.file("../kinds-\(UUID().uuidString).diff").standardizedFileURL
                try made.data.write(to: file)
                defer { try? FileManager.default.removeItem(at: file) }
                let run = try CLIRunner.runProcess(
                    URL(fileURLWithPath: "/usr/bin/git"), ["-C", dir.path, "apply", file.path],
                    environment: ["GIT_CONFIG_NOSYSTEM": "1", "HOME": dir.path])
                #expect(run.exitCode == 0, "\(name): git apply: \(run.stderr)")
            } else {
                let applied = try made.apply(to: dir.url)
                #expect(applied.written.count + applied.deleted.count == Set(made.files.map(\.path)).count, "\(name)")
                #expect(!snapshot(dir).contains { $0.contains(".cmm-apply-") }, "\(name)")
            }
            trees.append(try WorkspacePacker(options: .init(includeIgnored: true)).pack(dir.url).tree)
        }
        #expect(trees[0].files.map(\.path) == result.files.map(\.path), "\(name)")
        #expect(trees[0].files.map(\.kind) == trees[1].files.map(\.kind), "\(name): ours and git apply's differ")
        #expect(trees[0].entries.map(\.path) == trees[1].entries.map(\.path), "\(name): ours and git apply's differ")
    }

    @Test func aDirectoryThatHoldsMoreThanThePatchDeletesIsNotReplaced() throws {
        let base = try tree(files: ["a/one": "1\n"])
        let made = WorkspacePatch.make(base: base, result: try tree(files: ["a": "file\n"]))
        let dir = TemporaryDirectory("cmm-kinds-untracked")
        try write(base, into: dir)
        try Data("the requester's own\n".utf8).write(to: dir.file("a/untracked"))
        #expect { try made.apply(to: dir.url) } throws: { "\($0)".contains("a (exists here") }
        #expect(snapshot(dir) == ["a", "a/one", "a/untracked"])
    }
}

/// What a review found after the first round (issue #32): paths split as Swift strings, links
/// already in the directory, paths deep enough to make checking them slow, `.git` under other
/// names.
struct HostileWorkspaceReviewTests {
    static let zero = GitObjects.zeroID

    func patch(_ text: String) -> WorkspacePatch {
        WorkspacePatch(data: Data((WorkspacePatch.headerPrefix + "sha256:0\n" + text).utf8), baseHash: "", files: [])
    }

    func link(_ path: String, _ target: String) -> String {
        "diff --git a/\(path) b/\(path)\nnew file mode 120000\nindex \(Self.zero)..\(GitObjects.blobID(Data(target.utf8)))\n@@ -0,0 +1 @@\n+\(target)\n\\ No newline at end of file\n"
    }

    func file(_ path: String, _ contents: String = "x\n") -> String {
        "diff --git a/\(path) b/\(path)\nnew file mode 100644\nindex \(Self.zero)..\(GitObjects.blobID(Data(contents.utf8)))\n@@ -0,0 +1 @@\n+\(contents.dropLast())\n"
    }

    /// Every name below `dir` and `dir`'s parent, links not followed.
    func listing(_ dir: URL) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).sorted()
    }

    /// U+0600 (a "prepend" character) joins the `/` after it into one Swift `Character`, a
    /// combining mark the `/` before it: split as strings, `a؀/../.bashrc` has no `..`.
    @Test func aSlashHiddenInAGraphemeIsStillASlash() throws {
        let parent = TemporaryDirectory("cmm-grapheme")
        let dir = parent.file("proj")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let prepend = link("a\u{600}", ".") + file("a\u{600}/../.bashrc")
        #expect(throws: WorkspaceError.self) { try patch(prepend).apply(to: dir) }
        let mark =
            file("a/keep") + link("a/d", "..") + link("a/d/\u{301}U", "..") + file("\u{301}U/.bashrc")
        #expect(throws: WorkspaceError.self) { try patch(mark).apply(to: dir) }
        #expect(listing(parent.url) == ["proj"])
        #expect(listing(dir).isEmpty)
        #expect(throws: WorkspaceError.self) { try WorkspaceTree.check(path: "a\u{600}/../b") }
        #expect(throws: WorkspaceError.self) { try WorkspaceTree.check(path: "a/\u{301}/../b") }
        // The same bytes in two Unicode forms are two names to the filesystem: one tree holds
        // only one of them.
        #expect(throws: WorkspaceError.self) {
            try WorkspaceTree(entries: [
                WorkspaceEntry(path: "\u{e9}", kind: .file(Data())),
                WorkspaceEntry(path: "e\u{301}", kind: .file(Data())),
            ])
        }
    }

    /// A link the directory already has, whose target climbs through a name the patch makes a
    /// link, would leave once applied.
    @Test func aLinkAlreadyHereThatThePatchWouldMakeClimbOutIsRefused() throws {
        let dir = TemporaryDirectory("cmm-existing-link")
        _ = try patch(link("notes", "a/x/../../z")).apply(to: dir.url)
        #expect { try patch(link("a", ".") + file("x/keep")).apply(to: dir.url) } throws: {
            ($0 as? WorkspaceError)?.code == .conflict && "\($0)".contains("notes")
        }
        #expect(listing(dir.url) == ["notes"])
    }

    @Test func gitUnderOtherNamesIsGit() throws {
        for path in [".git./config", ".GIT /config", ".g\u{200C}it/hooks/pre-commit", "GIT~1/config", "a/.Git/x"] {
            #expect(throws: WorkspaceError.self, "\(path.debugDescription)") {
                try WorkspacePatch(parsing: patch(file(path)).data)
            }
        }
        #expect(throws: Never.self) { try WorkspacePatch(parsing: patch(file(".github/workflows/ci.yml")).data) }
    }

    /// Checking a path costs its length: thousands of sections thousands of components deep are
    /// refused before they are looked at, and one such path applies.
    @Test func pathsTooDeepToCheckAreRefusedAndOneDeepPathApplies() throws {
        let deep = Array(repeating: "d", count: 1_500).joined(separator: "/")
        let many = (0..<200).map { file("s\($0)/" + deep + "/f") }.joined()
        let dir = TemporaryDirectory("cmm-deep")
        #expect { try patch(many).apply(to: dir.url) } throws: { ($0 as? WorkspaceError)?.code == .tooLarge }
        #expect(listing(dir.url).isEmpty)
        let one = Array(repeating: "d", count: 500).joined(separator: "/")
        let applied = try patch(file(one + "/f")).apply(to: dir.url)
        #expect(applied.written == [one + "/f"])
    }

    /// An apply stopped by a kill leaves its staging directory; the next one removes it, and a
    /// workspace packed meanwhile leaves it out.
    @Test func aStaleStagingDirectoryIsLeftOutAndRemoved() throws {
        let dir = TemporaryDirectory("cmm-stale")
        let stale = dir.file(".cmm-apply-deadbeef")
        try FileManager.default.createDirectory(at: stale, withIntermediateDirectories: true)
        try Data("staged\n".utf8).write(to: stale.appending(path: "0"))
        let packed = try WorkspacePacker(options: .init(includeIgnored: true)).pack(dir.url)
        #expect(packed.tree.entries.isEmpty)
        #expect(packed.leftOut.map(\.path) == [".cmm-apply-deadbeef"])
        _ = try patch(file("new.txt")).apply(to: dir.url)
        #expect(listing(dir.url) == ["new.txt"])
    }
}
