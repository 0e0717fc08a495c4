import ArgumentParser
import DockerEngine
import Foundation
import MarketCrypto
import Participant

struct CleanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clean",
        abstract: "Remove this installation's exited containers, dangling images, temp job dirs, expired retired keys.",
        discussion: """
            Only things labelled io.claude-max-market.managed=true (and, for containers, a container \
            kind) are touched; containers and images that are not the tool's are never removed, \
            whatever their names or images. A job container whose `execute` process died (killed, \
            crashed) is removed even while it runs. Containers carry the installation that made them \
            (label io.claude-max-market.owner): only this one's are removed, so two homes sharing \
            an engine never remove each other's jobs; --all-owners takes every installation's \
            (and unlabelled older ones). Running containers are left alone unless --force, and so \
            are containers created in the last ten minutes that have not started yet (a job may \
            be starting).
            """
    )

    @Flag(name: .long, help: "Also remove the tool's running containers.") var force = false
    @Flag(
        name: .customLong("all-owners"),
        help: "Also containers made by other installations (other CMM_HOMEs) on this engine.")
    var allOwners = false
    @Flag(name: .customLong("dry-run"), help: "Show what would be removed, remove nothing.") var dryRun = false
    @OptionGroup var output: JSONOutput

    struct Report: Codable {
        var dryRun: Bool
        var containers: [String] = []
        var images: [String] = []
        var jobDirectories: [String] = []
        var retiredKeySets = 0
        var dockerReachable = true
    }

    func run() async throws {
        let context = CommandContext()
        let config = try context.config()
        var report = Report(dryRun: dryRun)
        let database = try context.database()
        let abandoned = try JobStore(database: database).abandonedJobIDs(at: context.now, record: !dryRun)
        do {
            let (containers, images) = try await context.withDocker { docker in
                try await Self.cleanDocker(
                    docker, owner: context.paths.ownerID, allOwners: allOwners, abandoned: abandoned, force: force,
                    dryRun: dryRun)
            }
            report.containers = containers
            report.images = images
        } catch let error as DockerError where error.code == .unreachable {
            report.dockerReachable = false
            Output.note("Docker engine not reachable; containers and images were not cleaned (\(error.message))")
        }
        report.jobDirectories = try Self.cleanJobDirectories(
            context.paths, jobs: JobStore(database: database), dryRun: dryRun)
        report.retiredKeySets = try context.keyStore.removeExpired(
            now: context.now, rotationDays: Int(config.integer(.keyRotationDays)), dryRun: dryRun
        ).count
        if !dryRun {
            try database.audit(
                actor: context.actor, kind: "clean",
                details: [
                    "containers": String(report.containers.count), "images": String(report.images.count),
                    "jobDirectories": String(report.jobDirectories.count),
                    "retiredKeySets": String(report.retiredKeySets),
                ], at: context.now)
        }
        if output.json {
            try Output.json(report)
            return
        }
        let verb = dryRun ? "would remove" : "removed"
        Output.line(
            "\(verb) \(report.containers.count) containers, \(report.images.count) images, "
                + "\(report.jobDirectories.count) job directories, \(report.retiredKeySets) retired key sets")
        for id in report.containers { Output.line("  container \(id.prefix(12))") }
        for id in report.images { Output.line("  image \(id)") }
        for path in report.jobDirectories { Output.line("  directory \(path)") }
    }

    /// A container still in `created` this long after creation was abandoned; younger ones may
    /// be a job between create and start.
    static let createdGrace: TimeInterval = 600

    /// Containers of this installation (`owner`), or of every one with `allOwners`. One of ours
    /// whose job is in `abandoned` goes even while it runs: the process that ran it died, so
    /// nothing else would stop it.
    static func cleanDocker(
        _ docker: DockerClient, owner: String, allOwners: Bool, abandoned: Set<String>, force: Bool, dryRun: Bool
    ) async throws -> ([String], [String]) {
        var containers: [String] = []
        let now = Date().timeIntervalSince1970
        for container in try await docker.listContainers(labels: ["\(Labels.managed)=true"], all: true) {
            // The engine filtered by label; check the kind too: containers inherit an image's labels,
            // so one made by someone else from our image also says `managed`, but never a container kind.
            guard Labels.isManagedContainer(container.Labels) else { continue }
            let ours = container.Labels?[Labels.owner] == owner
            guard ours || allOwners else { continue }
            let age = now - Double(container.Created ?? 0)
            let orphaned = ours && abandoned.contains(container.Labels?[Labels.job] ?? "")
            switch container.State {
            case "exited", "dead": break
            case _ where orphaned: break
            case "created" where age > createdGrace: break
            case "running" where force, "restarting" where force, "paused" where force: break
            default: continue
            }
            if !dryRun {
                do { try await docker.removeContainer(container.Id, force: true) } catch let error as DockerError
                    where error.code == .notFound || error.code == .conflict
                {
                    continue  // removed meanwhile by its own job
                }
            }
            containers.append(container.Id)
        }
        var images: [String] = []
        for image in try await docker.listImages(labels: ["\(Labels.managed)=true"], dangling: true)
        where Labels.isManaged(image.Labels) {
            if !dryRun {
                do { try await docker.removeImage(image.Id) } catch let error as DockerError
                    where error.code == .conflict
                {
                    continue
                }
            }
            images.append(image.Id)
        }
        return (containers, images)
    }

    /// Job work directories of jobs that are not running.
    static func cleanJobDirectories(_ paths: ParticipantPaths, jobs: JobStore, dryRun: Bool) throws -> [String] {
        let entries =
            (try? FileManager.default.contentsOfDirectory(at: paths.jobsDirectory, includingPropertiesForKeys: nil))
            ?? []
        var removed: [String] = []
        for entry in entries {
            if let job = try jobs.job(entry.lastPathComponent), !job.state.isFinal { continue }
            if !dryRun { try FileManager.default.removeItem(at: entry) }
            removed.append(entry.path)
        }
        return removed
    }
}
