import Foundation
import TestSupport
import Testing

@testable import Workspace

/// Packing, the archive format read as hostile input, and patches made, read and applied.
struct WorkspaceTests {
    func write(_ directory: URL, _ files: [String: String], executable: Set<String> = []) throws {
        for (path, text) in files {
            let url = directory.appending(path: path)
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(text.utf8).write(to: url)
            chmod(url.path, executable.contains(path) ? 0o755 : 0o644)
        }
    }

    func git(_ directory: URL, _ arguments: String...) throws {
        let result = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/git"), ["-C", directory.path] + arguments,
            environment: ["GIT_CONFIG_NOSYSTEM": "1", "HOME": directory.path])
        guard result.exitCode == 0 else { throw CLIRunnerError(description: "git \(arguments): \(result.stderr)") }
    }

    @Test func packingKeepsFilesModesAndLinksAndSaysWhatItLeftOut() throws {
        let dir = TemporaryDirectory("cmm-ws")
        try write(
            dir.url, ["a.txt": "one\n", "src/run.sh": "#!/bin/sh\n", "src/deep/x.bin": "\u{0}\u{1}"],
            executable: ["src/run.sh"])
        symlink("src/run.sh", dir.file("inside-link").path)
        symlink("../../etc/passwd", dir.file("src/escaping-link").path)
        symlink("/etc/passwd", dir.file("absolute-link").path)
        mkfifo(dir.file("pipe").path, 0o600)
        try FileManager.default.createDirectory(at: dir.file(".git"), withIntermediateDirectories: true)
        try write(dir.url, [".git/config": "[core]\n"])
        try FileManager.default.createDirectory(at: dir.file("empty"), withIntermediateDirectories: true)

        let packed = try WorkspacePacker(options: .init(includeIgnored: true)).pack(dir.url)
        let paths = packed.tree.entries.map(\.path)
        #expect(paths == ["a.txt", "empty", "inside-link", "src", "src/deep", "src/deep/x.bin", "src/run.sh"])
        #expect(packed.tree["src/run.sh"]?.isExecutable == true)
        #expect(packed.tree["a.txt"]?.isExecutable == false)
        #expect(packed.tree["inside-link"]?.kind == .symlink("src/run.sh"))
        let leftOut = Dictionary(grouping: packed.leftOut, by: \.reason).mapValues { $0.map(\.path).sorted() }
        #expect(leftOut["links pointing outside the directory"] == ["absolute-link", "src/escaping-link"])
        #expect(leftOut["FIFOs"] == ["pipe"])
        #expect(leftOut["git internals (.git)"] == [".git"])
        #expect(packed.tree.topLevelNames == ["a.txt", "empty/", "inside-link", "src/"])
        #expect(packed.tree.fileCount == 4)
    }

    @Test func inAGitWorkTreeIgnoredFilesStayBehindUnlessAskedFor() throws {
        let dir = TemporaryDirectory("cmm-ws-git")
        try git(dir.url, "init", "-q")
        try write(
            dir.url,
            [
                ".gitignore": "build/\n*.log\n", "main.c": "int main(){}\n", "build/out.o": "x", "debug.log": "y",
                "new.c": "z\n",
            ])
        try git(dir.url, "add", ".gitignore", "main.c")
        let packed = try WorkspacePacker().pack(dir.url)
        #expect(packed.usedGit)
        #expect(packed.tree.files.map(\.path) == [".gitignore", "main.c", "new.c"])
        #expect(
            Set(packed.leftOut.filter { $0.reason == "files git ignores" }.map(\.path)) == ["build/out.o", "debug.log"])
        let everything = try WorkspacePacker(options: .init(includeIgnored: true)).pack(dir.url)
        #expect(everything.tree.files.map(\.path) == [".gitignore", "build/out.o", "debug.log", "main.c", "new.c"])
    }

    @Test func limitsAreCheckedWhilePackingAndNameTheKey() throws {
        let dir = TemporaryDirectory("cmm-ws-limits")
        try write(dir.url, ["a": "12345", "b": "67890", "c": "x"])
        #expect {
            try WorkspacePacker(options: .init(includeIgnored: true, limits: .init(maxBytes: 8, maxFiles: 10))).pack(
                dir.url)
        } throws: { ($0 as? WorkspaceError)?.code == .tooLarge && "\($0)".contains("limits.maxWorkspaceBytes") }
        #expect {
            try WorkspacePacker(options: .init(includeIgnored: true, limits: .init(maxBytes: 100, maxFiles: 2))).pack(
                dir.url)
        } throws: { ($0 as? WorkspaceError)?.code == .tooLarge && "\($0)".contains("limits.maxWorkspaceFiles") }
    }

    @Test func theArchiveRoundTripsAndIsCanonical() throws {
        let long = String(repeating: "d/", count: 70) + "file.txt"
        let tree = try WorkspaceTree(entries: [
            .init(path: "b.txt", kind: .file(Data("b".utf8))),
            .init(path: "a", kind: .directory),
            .init(path: "a/x", kind: .file(Data([0, 1, 2])), mode: 0o755),
            .init(path: "a/link", kind: .symlink("x")),
            .init(path: long, kind: .file(Data("deep".utf8))),
        ])
        let archive = tree.tar()
        let (read, skipped) = try WorkspaceTree.read(tar: archive, limits: WorkspaceLimits())
        #expect(skipped.isEmpty)
        #expect(read == tree)
        #expect(read.tar() == archive)
        #expect(read.baseHash == tree.baseHash)
    }

    @Test func hostileArchivesAreRefusedWhole() throws {
        func archive(_ blocks: [[UInt8]]) -> Data { Data(blocks.joined()) + Data(count: 1024) }
        func header(_ name: String, type: Character = "0", mode: UInt16 = 0o644, size: Int = 0, link: String = "")
            -> [UInt8]
        {
            TarWriter.block(
                name: Array(name.utf8), type: type.asciiValue!, mode: mode, size: size, link: Array(link.utf8))
        }
        let limits = WorkspaceLimits()
        let cases: [(String, Data, WorkspaceError.Code)] = [
            ("climbing out", archive([header("../evil")]), .badPath),
            ("an absolute path", archive([header("/etc/passwd")]), .badPath),
            ("a dot-dot inside", archive([header("a/../../b")]), .badPath),
            ("setuid", archive([header("tool", mode: 0o4755)]), .badEntry),
            ("a link out", archive([header("l", type: "2", link: "../../x")]), .badEntry),
            ("an absolute link", archive([header("l", type: "2", link: "/etc")]), .badEntry),
            (
                "a file below a link",
                archive([header("l", type: "2", link: "d"), header("d", type: "5"), header("l/x")]), .badEntry
            ),
            ("a device", archive([header("dev", type: "3")]), .badEntry),
            ("a hard link", archive([header("a"), header("b", type: "1", link: "a")]), .badEntry),
            ("a duplicate", archive([header("a"), header("a")]), .badEntry),
            ("a size past the end", archive([header("a", size: 1 << 20)]), .badArchive),
        ]
        for (name, data, code) in cases {
            do {
                _ = try WorkspaceTree.read(tar: data, limits: limits)
                Issue.record("\(name): accepted")
            } catch {
                #expect(error.code == code, "\(name): \(error)")
            }
        }
        var corrupt = [UInt8](archive([header("a")]))
        corrupt[0] = UInt8(ascii: "b")
        #expect(throws: WorkspaceError.self) { try WorkspaceTree.read(tar: Data(corrupt), limits: limits) }
        #expect(throws: WorkspaceError.self) {
            try WorkspaceTree.read(tar: Data(repeating: 0x41, count: 700), limits: limits)
        }
        let many = try WorkspaceTree(entries: (0..<5).map { .init(path: "f\($0)", kind: .file(Data("x".utf8))) })
        #expect(throws: WorkspaceError.self) {
            try WorkspaceTree.read(tar: many.tar(), limits: .init(maxBytes: 100, maxFiles: 4))
        }
        #expect(throws: WorkspaceError.self) {
            try WorkspaceTree.read(tar: many.tar(), limits: .init(maxBytes: 4, maxFiles: 100))
        }
    }

    @Test func leniently_aJobsTreeLosesWhatCannotBeSent() throws {
        func header(_ name: String, type: Character = "0", size: Int = 0, link: String = "") -> [UInt8] {
            TarWriter.block(
                name: Array(name.utf8), type: type.asciiValue!, mode: 0o644, size: size, link: Array(link.utf8))
        }
        var data = Data(header("./", type: "5"))
        data += Data(header("./a", size: 2)) + Data("hi".utf8) + Data(count: 510)
        data += Data(header("./hard", type: "1", link: "./a"))
        data += Data(header("./out", type: "2", link: "/etc/shadow"))
        data += Data(header("./fifo", type: "6"))
        data += Data(count: 1024)
        let (tree, skipped) = try WorkspaceTree.read(tar: data, limits: WorkspaceLimits(), lenient: true)
        #expect(tree.files.map(\.path) == ["a", "hard"])
        #expect(tree["hard"]?.kind == .file(Data("hi".utf8)))
        #expect(skipped.map(\.path) == ["out", "fifo"])
    }

    func tree(_ files: [String: String], executable: Set<String> = [], links: [String: String] = [:]) throws
        -> WorkspaceTree
    {
        var entries: [WorkspaceEntry] = []
        var directories = Set<String>()
        for path in Array(files.keys) + Array(links.keys) {
            var parent = path
            while let slash = parent.lastIndex(of: "/") {
                parent = String(parent[..<slash])
                directories.insert(parent)
            }
        }
        entries += directories.map { WorkspaceEntry(path: $0, kind: .directory) }
        entries += files.map {
            WorkspaceEntry(
                path: $0.key, kind: .file(Data($0.value.utf8)), mode: executable.contains($0.key) ? 0o755 : 0o644)
        }
        entries += links.map { WorkspaceEntry(path: $0.key, kind: .symlink($0.value)) }
        return try WorkspaceTree(entries: entries)
    }

    static let before: [String: String] = [
        "README.md": "# demo\n",
        "src/calc.py": (1...30).map { "line \($0)\n" }.joined(),
        "src/old.txt": "to be removed\n",
        "tail.txt": "no newline at the end",
        "tool.sh": "echo hi\n",
    ]

    static var after: [String: String] {
        var files = before
        files["src/calc.py"] =
            (1...30).map { $0 == 3 ? "LINE THREE\n" : $0 == 27 ? "" : "line \($0)\n" }.joined() + "line 31\n"
        files["src/old.txt"] = nil
        files["src/new.txt"] = "fresh\n"
        files["tail.txt"] = "no newline at the end\nnow there is\n"
        files["data.bin"] = "\u{0}\u{1}\u{2}binary"
        return files
    }

    @Test func aPatchAppliesHereAndWithGitApply() throws {
        let base = try tree(Self.before)
        let result = try tree(Self.after, executable: ["tool.sh"], links: ["latest": "src/new.txt"])
        let patch = WorkspacePatch.make(base: base, result: result)
        #expect(patch.baseHash == base.baseHash)
        #expect(
            Set(patch.files.map(\.path)) == [
                "data.bin", "latest", "src/calc.py", "src/new.txt", "src/old.txt", "tail.txt", "tool.sh",
            ])
        #expect(patch.diffstat.contains("7 files changed"))
        let reread = try WorkspacePatch(parsing: patch.data)
        #expect(reread.files == patch.files)
        #expect(reread.baseHash == patch.baseHash)

        for useGit in [false, true] {
            let dir = TemporaryDirectory("cmm-apply")
            try write(dir.url, Self.before)
            if useGit {
                let file = dir.file("../patch-\(UUID().uuidString).diff").standardizedFileURL
                try patch.data.write(to: file)
                defer { try? FileManager.default.removeItem(at: file) }
                try git(dir.url, "apply", "--whitespace=nowarn", file.path)
            } else {
                let applied = try patch.apply(to: dir.url)
                #expect(applied.deleted == ["src/old.txt"])
            }
            // What git keeps of a mode is whether it is executable (git apply follows the
            // process's umask, which other tests change for a moment while they create keys).
            func kept(_ tree: WorkspaceTree) -> [String] {
                tree.files.map { "\($0.path) \($0.kind) \($0.isExecutable)" }
            }
            let packed = try WorkspacePacker(options: .init(includeIgnored: true)).pack(dir.url)
            #expect(kept(packed.tree) == kept(result), "applied with git: \(useGit)")
        }
    }

    @Test func applyingRefusesAndChangesNothing() throws {
        let base = try tree(Self.before)
        let patch = WorkspacePatch.make(base: base, result: try tree(Self.after))
        let dir = TemporaryDirectory("cmm-refuse")
        var changed = Self.before
        changed["src/calc.py"] = "edited by the requester meanwhile\n"
        try write(dir.url, changed)
        let snapshot = try WorkspacePacker(options: .init(includeIgnored: true)).pack(dir.url).tree
        #expect { try patch.apply(to: dir.url) } throws: {
            ($0 as? WorkspaceError)?.code == .conflict
                && "\($0)".contains("src/calc.py (changed since the job was sent)")
        }
        #expect(try WorkspacePacker(options: .init(includeIgnored: true)).pack(dir.url).tree == snapshot)

        func hostile(_ text: String) -> Data { Data((WorkspacePatch.headerPrefix + "sha256:0\n" + text).utf8) }
        let newFile =
            "new file mode 100644\nindex \(GitObjects.zeroID)..\(GitObjects.blobID(Data("x\n".utf8)))\n--- /dev/null\n+++ b/P\n@@ -0,0 +1 @@\n+x\n"
        for path in ["../outside", ".git/hooks/pre-commit", "a/.GIT/config", "/etc/passwd"] {
            let text = "diff --git a/\(path) b/\(path)\n" + newFile.replacingOccurrences(of: "b/P", with: "b/\(path)")
            #expect(throws: WorkspaceError.self, "\(path)") {
                try WorkspacePatch(parsing: hostile(text)).apply(to: dir.url)
            }
        }
        // A path through a link the requester has is refused, not followed.
        let elsewhere = TemporaryDirectory("cmm-refuse-elsewhere")
        symlink(elsewhere.path, dir.file("through").path)
        let through =
            "diff --git a/through/x b/through/x\n" + newFile.replacingOccurrences(of: "b/P", with: "b/through/x")
        #expect { try WorkspacePatch(parsing: hostile(through)).apply(to: dir.url) } throws: {
            ($0 as? WorkspaceError)?.code == .conflict
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: elsewhere.path).isEmpty)
        let link =
            "diff --git a/l b/l\nnew file mode 120000\nindex \(GitObjects.zeroID)..\(GitObjects.blobID(Data("../../etc".utf8)))\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+../../etc\n\\ No newline at end of file\n"
        #expect { try WorkspacePatch(parsing: hostile(link)).apply(to: dir.url) } throws: {
            ($0 as? WorkspaceError)?.code == .conflict && "\($0)".contains("points outside")
        }
    }

    @Test func lineDiffIsMinimalAndCorrect() {
        var generator = SeededRandom(state: 7)
        for _ in 0..<200 {
            let a = (0..<Int.random(in: 0..<30, using: &generator)).map { _ in Int.random(in: 0..<5, using: &generator)
            }
            let b = (0..<Int.random(in: 0..<30, using: &generator)).map { _ in Int.random(in: 0..<5, using: &generator)
            }
            let operations = LineDiff.diff(a, b)
            var rebuilt: [Int] = []
            var consumed: [Int] = []
            for operation in operations {
                switch operation {
                case .equal(let o, let n):
                    #expect(a[o] == b[n])
                    rebuilt.append(b[n])
                    consumed.append(o)
                case .delete(let o): consumed.append(o)
                case .insert(let n): rebuilt.append(b[n])
                }
            }
            #expect(rebuilt == b)
            #expect(consumed == Array(a.indices))
        }
    }

    @Test func binaryContentsSurviveBase85AndStoredZlib() throws {
        for size in [0, 1, 51, 52, 53, 70_000] {
            let data = Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            let lines = GitObjects.base85Lines(GitObjects.zlibStored(data))
            let back = try GitObjects.unzlibStored(
                GitObjects.decodeBase85(lines: lines.map { Substring($0) }), expectedSize: size)
            #expect(back == data)
        }
    }
}
