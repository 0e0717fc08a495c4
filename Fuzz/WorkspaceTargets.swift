import Foundation
import Workspace

#if canImport(Glibc)
import Glibc
#endif

// The workspace's readers as targets of their own (`CMM_FUZZ_TARGET`): a requester's archive
// read strictly and a job's leniently, a result's patch parsed, and a patch applied to a
// scratch tree. Besides not crashing, applying must keep its promises, checked after every
// input: nothing lands outside the tree, no link in it leads out, no staging directory is left,
// and a refusal changes nothing.

func fuzzTar(_ bytes: Data) {
    let limits = WorkspaceLimits(maxBytes: 1 << 20, maxFiles: 1000)
    _ = try? WorkspaceTree.read(tar: bytes, limits: limits)
    _ = try? WorkspaceTree.read(tar: bytes, limits: limits, lenient: true)
}

func fuzzPatch(_ bytes: Data) {
    guard let patch = try? WorkspacePatch(parsing: bytes, maxFiles: 1000) else { return }
    _ = patch.diffstat
}

/// A scratch directory per process: `tree` is what a patch is applied to, `outside` beside it
/// must never change.
let scratch: URL = {
    let url = FileManager.default.temporaryDirectory.appending(path: "cmm-fuzz-apply-\(getpid())")
    try? FileManager.default.removeItem(at: url)
    try! FileManager.default.createDirectory(at: url.appending(path: "outside"), withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: url.appending(path: "outside/sentinel").path, contents: Data("s".utf8))
    return url
}()

/// The tree every input is applied to (the seeds' patches are made against it).
let applyBase: [(path: String, contents: String?, link: String?)] = [
    ("a.txt", "x\n", nil), ("dir/b.txt", "one\ntwo\nthree\n", nil), ("dir/sub/c.txt", "c\n", nil),
    ("link", nil, "a.txt"), ("dir/up", nil, ".."),
]

func fuzzApply(_ bytes: Data) {
    guard let patch = try? WorkspacePatch(parsing: bytes, maxFiles: 100) else { return }
    let tree = scratch.appending(path: "tree")
    let manager = FileManager.default
    try? manager.removeItem(at: tree)
    for entry in applyBase {
        let url = tree.appending(path: entry.path)
        try! manager.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        if let contents = entry.contents { _ = manager.createFile(atPath: url.path, contents: Data(contents.utf8)) }
        if let link = entry.link { symlink(link, url.path) }
    }
    let before = listing(tree)
    do {
        _ = try patch.apply(to: tree)
    } catch {
        // A refusal (anything but a failing disk) changes nothing.
        if error.code != .io, listing(tree) != before { fatalError("a refused patch changed the tree") }
    }
    guard (try? manager.contentsOfDirectory(atPath: scratch.path).sorted()) == ["outside", "tree"],
        (try? manager.contentsOfDirectory(atPath: scratch.appending(path: "outside").path)) == ["sentinel"]
    else { fatalError("applying wrote outside the tree") }
    let root = tree.path
    for (path, kind) in listing(tree) {
        if path.hasPrefix(".cmm-apply-") { fatalError("applying left its staging directory") }
        guard kind.hasPrefix("link"), let real = realpath(root + "/" + path, nil) else { continue }
        let resolved = String(cString: real)
        free(real)
        if resolved != root && !resolved.hasPrefix(root + "/") {
            fatalError("a link leads out: \(path) -> \(resolved)")
        }
    }
}

/// Every path below `root` with its kind and contents, links not followed.
func listing(_ root: URL) -> [String: String] {
    var entries: [String: String] = [:]
    func visit(_ relative: String) {
        let absolute = relative.isEmpty ? root.path : root.path + "/" + relative
        for name in (try? FileManager.default.contentsOfDirectory(atPath: absolute)) ?? [] {
            let path = relative.isEmpty ? name : relative + "/" + name
            var info = stat()
            guard lstat(root.path + "/" + path, &info) == 0 else { continue }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                entries[path] = "dir"
                visit(path)
            case S_IFLNK:
                entries[path] =
                    "link "
                    + ((try? FileManager.default.destinationOfSymbolicLink(atPath: root.path + "/" + path)) ?? "")
            default:
                let contents = FileManager.default.contents(atPath: root.path + "/" + path) ?? Data()
                entries[path] = "file \(info.st_mode & 0o777) " + contents.base64EncodedString()
            }
        }
    }
    visit("")
    return entries
}
