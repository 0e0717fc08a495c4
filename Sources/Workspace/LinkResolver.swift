/// What a path holds, as far as resolving links needs to know.
enum PathNode: Equatable {
    case absent
    case directory
    case file
    case link(String)
}

/// Where a link lands, resolved the way the kernel resolves it: every component of the target
/// that is itself a link is followed, from that link's own directory, so `a/up -> ..` and
/// `a/esc -> up/../..` are seen to leave the root although `a/esc` read as text stays inside.
///
/// The tree is hostile: a chain of links is followed at most `maxHops` times in all (Linux's
/// MAXSYMLINKS), a link met again while it is being followed is a loop, and the work of one
/// resolver is bounded (`budget`, in bytes of paths walked), so that no tree can make resolving
/// slow. A part of the target that does not exist is read as plain names, as the kernel would
/// read the directories a later write could make there.
struct LinkResolver {
    enum Outcome: Equatable {
        /// The path the link lands on, relative to the root ("" is the root itself).
        case inside(String)
        case outside
        case insideGit
        case loop
        case tooDeep
        case tooComplex
        /// The target itself is not one a workspace holds: empty, absolute or with a control
        /// character.
        case badTarget

        /// Why a link with this outcome is refused, for a person.
        var refusal: String? {
            switch self {
            case .inside: nil
            case .outside: "points outside the workspace"
            case .insideGit: "points inside .git"
            case .loop: "is part of a loop of links"
            case .tooDeep: "goes through more than \(LinkResolver.maxHops) links"
            case .tooComplex: "takes too much work to resolve"
            case .badTarget: "has an absolute, empty or unreadable target"
            }
        }

        /// The same, for a list of what packing left out.
        var leftOutReason: String {
            switch self {
            case .inside: "links"
            case .outside, .badTarget: "links pointing outside the directory"
            case .insideGit: "links into .git"
            case .loop: "links in a loop"
            case .tooDeep: "links through more than \(LinkResolver.maxHops) links"
            case .tooComplex: "links too costly to resolve"
            }
        }
    }

    /// Linux's MAXSYMLINKS: the links one resolution may follow.
    static let maxHops = 40

    private enum Failure: Error {
        case outside, loop, tooDeep, tooComplex
    }

    private struct Followed {
        var components: [String]
        var hops: Int
    }

    private let lookup: (String) -> PathNode
    private var followed: [String: Result<Followed, Failure>] = [:]
    private var following: Set<String> = []
    private var budget: Int

    /// `lookup` answers for a path relative to the root whose parent directories are real
    /// directories (never links: those have been followed already).
    init(budget: Int = 64 << 20, lookup: @escaping (String) -> PathNode) {
        self.lookup = lookup
        self.budget = budget
    }

    /// A resolver over a list of entries.
    init(entries: some Sequence<WorkspaceEntry>) {
        var nodes: [[UInt8]: PathNode] = [:]
        for entry in entries {
            switch entry.kind {
            case .directory: nodes[PathBytes.key(entry.path)] = .directory
            case .file: nodes[PathBytes.key(entry.path)] = .file
            case .symlink(let target): nodes[PathBytes.key(entry.path)] = .link(target)
            }
        }
        self.init { nodes[PathBytes.key($0)] ?? .absent }
    }

    /// Where the link at `path` (relative to the root) with `target` lands.
    mutating func resolve(link path: String, target: String) -> Outcome {
        guard Self.isPlausible(target) else { return .badTarget }
        switch follow(path, target: target, depth: 1) {
        case .success(let landed):
            if landed.components.contains(where: PathBytes.isDotGit) { return .insideGit }
            return .inside(landed.components.joined(separator: "/"))
        case .failure(.outside): return .outside
        case .failure(.loop): return .loop
        case .failure(.tooDeep): return .tooDeep
        case .failure(.tooComplex): return .tooComplex
        }
    }

    /// A target a workspace may hold at all: relative, not empty, no control character, within
    /// PATH_MAX.
    static func isPlausible(_ target: String) -> Bool {
        !target.isEmpty && !target.hasPrefix("/") && target.utf8.count <= WorkspaceLimits.maxPathBytes
            && !target.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f }
    }

    /// Follows one link: its hops include itself. Outcomes that hold wherever the link is met
    /// are remembered; one cut short by the depth of the chain that reached it is not.
    private mutating func follow(_ link: String, target: String, depth: Int) -> Result<Followed, Failure> {
        if let known = followed[link] { return known }
        guard depth <= Self.maxHops else { return .failure(.tooDeep) }
        guard !following.contains(link) else { return .failure(.loop) }
        following.insert(link)
        defer { following.remove(link) }
        let directory = Array(PathBytes.components(link).dropLast())
        let result = walk(from: directory, target: target, depth: depth).flatMap { walked in
            walked.hops + 1 > Self.maxHops
                ? .failure(.tooDeep) : .success(Followed(components: walked.components, hops: walked.hops + 1))
        }
        if case .failure(.tooDeep) = result { return result }
        if case .failure(.tooComplex) = result { return result }
        followed[link] = result
        return result
    }

    private mutating func walk(from directory: [String], target: String, depth: Int) -> Result<Followed, Failure> {
        guard Self.isPlausible(target) else { return .failure(.outside) }
        var stack = directory
        var path = directory.joined(separator: "/")
        var hops = 0
        for component in PathBytes.components(target) where !component.isEmpty && !PathBytes.isDot(component) {
            let climbs = PathBytes.isDotDot(component)
            if climbs {
                guard !stack.isEmpty else { return .failure(.outside) }
                stack.removeLast()
                path = stack.joined(separator: "/")
            } else {
                stack.append(component)
                path = path.isEmpty ? component : path + "/" + component
            }
            budget -= path.utf8.count + 1
            // Past PATH_MAX the kernel stops (ENAMETOOLONG); so does this, before the work grows.
            guard budget >= 0, path.utf8.count <= WorkspaceLimits.maxPathBytes else { return .failure(.tooComplex) }
            guard !climbs else { continue }
            if case .link(let next) = lookup(path) {
                switch follow(path, target: next, depth: depth + 1) {
                case .failure(let failure): return .failure(failure)
                case .success(let landed):
                    hops += landed.hops
                    guard hops <= Self.maxHops else { return .failure(.tooDeep) }
                    stack = landed.components
                    path = stack.joined(separator: "/")
                }
            }
        }
        return .success(Followed(components: stack, hops: hops))
    }
}

extension WorkspaceTree {
    /// The entries less every link that does not land inside (resolved as the kernel would,
    /// through the other links of the same entries), each listed with why. What is kept
    /// resolves the same once those are gone: a link whose way went through a dropped one
    /// failed with it.
    static func droppingLinksThatEscape(_ entries: [WorkspaceEntry]) -> (
        kept: [WorkspaceEntry], dropped: [(path: String, outcome: LinkResolver.Outcome)]
    ) {
        var resolver = LinkResolver(entries: entries)
        var kept: [WorkspaceEntry] = []
        var dropped: [(path: String, outcome: LinkResolver.Outcome)] = []
        for entry in entries {
            if case .symlink(let target) = entry.kind {
                let outcome = resolver.resolve(link: entry.path, target: target)
                if outcome.refusal != nil {
                    dropped.append((entry.path, outcome))
                    continue
                }
            }
            kept.append(entry)
        }
        return (kept, dropped)
    }
}
