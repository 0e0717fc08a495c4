import DockerEngine
import Foundation
import MarketCore
import NIOCore
import TestSupport
import Testing

@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct DockerEngineTests {
    func withClient<T: Sendable>(_ body: (DockerClient) async throws -> T) async throws -> T {
        try await DockerClient.withClient(configuration: DockerClient.forTests(), body)
    }

    func labels(_ job: String = UUID().uuidString) -> [String: String] {
        Labels.make(kind: "test", job: job, version: ToolVersion.current)
    }

    /// Runs `command` to completion; returns (exit code, stdout, stderr, frames).
    func run(_ client: DockerClient, _ command: [String], stdin: Data? = nil) async throws -> (
        Int, String, String, [OutputFrame]
    ) {
        var spec = ContainerSpec(image: TestImage.name, command: command, labels: labels())
        if stdin != nil { spec.openStdin() }
        let id = try await client.createContainer(spec)
        let frames = try await client.withAttachedContainer(id, stdin: stdin != nil) { attached in
            try await client.startContainer(id)
            if let stdin {
                try await attached.write(stdin)
                attached.closeStdin()
            }
            var frames: [OutputFrame] = []
            for try await frame in attached.output { frames.append(frame) }
            return frames
        }
        let code = try await client.waitContainer(id)
        try await client.removeContainer(id)
        let out = frames.filter { $0.stream == .stdout }.flatMap(\.bytes)
        let err = frames.filter { $0.stream == .stderr }.flatMap(\.bytes)
        return (code, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self), frames)
    }

    @Test func pingVersionInfo() async throws {
        try await withClient { client in
            try await client.ping()
            let version = try await client.version()
            #expect(!version.Version.isEmpty && version.ApiVersion >= "1.41")
            let info = try await client.info()
            #expect(info.Driver?.isEmpty == false)
        }
    }

    @Test func buildsATestImageWithLabels() async throws {
        try await withClient { client in
            try await TestImage.ensure(client)
            let image = try #require(try await client.inspectImage(TestImage.name))
            #expect(image.Config?.Labels?[Labels.kind] == "test-image")
            #expect(image.Config?.Labels?[Labels.createdBy] == "claude-max-market/\(ToolVersion.current)")
            let listed = try await client.listImages(labels: ["\(Labels.kind)=test-image"])
            #expect(listed.contains { $0.Id == image.Id })
        }
    }

    @Test func runsAContainerAndReadsItsOutput() async throws {
        try await withClient { client in
            try await TestImage.ensure(client)
            let (code, out, err, _) = try await run(client, ["sh", "-c", "echo hello; echo oops >&2; id -u; exit 3"])
            #expect(code == 3)
            #expect(out == "hello\n65534\n")
            #expect(err == "oops\n")
        }
    }

    @Test func demultiplexesLargeAndInterleavedOutput() async throws {
        try await withClient { client in
            try await TestImage.ensure(client)
            let script = """
                i=0; while [ $i -lt 3000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done
                head -c 3000000 /dev/zero | tr '\\0' a
                """
            let (code, out, err, frames) = try await run(client, ["sh", "-c", script])
            #expect(code == 0)
            let outLines = out.split(separator: "\n")
            #expect(outLines.count == 3001)
            #expect(outLines.prefix(3000).enumerated().allSatisfy { $0.element == "out\($0.offset)" })
            #expect(outLines.last?.count == 3_000_000)
            let errLines = err.split(separator: "\n")
            #expect(errLines.count == 3000)
            #expect(errLines.enumerated().allSatisfy { $0.element == "err\($0.offset)" })
            #expect(Set(frames.map(\.stream)) == [.stdout, .stderr])
        }
    }

    @Test func writesToStdin() async throws {
        try await withClient { client in
            try await TestImage.ensure(client)
            let input = Data((0..<200_000).map { _ in UInt8(ascii: "x") } + Array("\nend\n".utf8))
            let (code, out, _, _) = try await run(client, ["sh", "-c", "wc -c; echo done"], stdin: input)
            #expect(code == 0)
            #expect(out.contains("200005") && out.hasSuffix("done\n"))
        }
    }

    @Test func containersCarryLabelsAndCanBeListedAndLogged() async throws {
        try await withClient { client in
            try await TestImage.ensure(client)
            let job = UUID().uuidString
            let id = try await client.createContainer(
                ContainerSpec(
                    image: TestImage.name, command: ["sh", "-c", "echo logged; echo e >&2"], labels: labels(job)))
            try await client.startContainer(id)
            #expect(try await client.waitContainer(id) == 0)
            let listed = try await client.listContainers(labels: ["\(Labels.job)=\(job)"])
            #expect(listed.map(\.Id) == [id])
            #expect(listed.first?.Labels?[Labels.managed] == "true")
            var text = ""
            for try await frame in try await client.logs(id) where frame.stream == .stdout {
                text += String(decoding: frame.bytes, as: UTF8.self)
            }
            #expect(text == "logged\n")
            try await client.removeContainer(id)
            #expect(try await client.listContainers(labels: ["\(Labels.job)=\(job)"]).isEmpty)
        }
    }

    @Test func reportsEvents() async throws {
        try await withClient { client in
            try await TestImage.ensure(client)
            let since = Int64(Date().timeIntervalSince1970) - 1
            let job = UUID().uuidString
            let id = try await client.createContainer(
                ContainerSpec(image: TestImage.name, command: ["true"], labels: labels(job)))
            try await client.removeContainer(id)
            var actions: [String] = []
            for try await event in try await client.events(
                labels: ["\(Labels.job)=\(job)"], since: since, until: Int64(Date().timeIntervalSince1970) + 1)
            {
                #expect(event.Actor.ID == id)
                actions.append(event.Action)
            }
            #expect(actions.contains("create") && actions.contains("destroy"))
        }
    }

    @Test func aMissingImageIsATypedErrorWithTheEnginesMessage() async throws {
        try await withClient { client in
            await expectDockerError(.notFound, containing: "No such image") {
                _ = try await client.createContainer(
                    ContainerSpec(image: "cmm-test/does-not-exist:1", labels: labels()))
            }
            let missing = try await client.inspectImage("cmm-test/does-not-exist:1")
            #expect(missing == nil)
        }
    }

    @Test func anEngineErrorMidStreamIsReported() async throws {
        try await withClient { client in
            var tar = TarArchive()
            try tar.addFile(
                "Dockerfile",
                contents: Data("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n".utf8))
            try tar.addFile("busybox", from: URL(fileURLWithPath: DockerTestEnvironment.busyboxPath))
            let lines = LockedBox<[String]>([])
            await expectDockerError(.stream, containing: "returned a non-zero code") {
                _ = try await client.buildImage(
                    context: tar.finish(), tags: ["cmm-test/failing:1"],
                    labels: Labels.make(kind: "test-image", version: ToolVersion.current)
                ) { event in
                    if case .output(let text) = event { lines.append(text) }
                }
            }
            #expect(lines.value.contains { $0.contains("Step 1/") })
        }
    }

    @Test func aDeadSocketIsUnreachable() async throws {
        let directory = TemporaryDirectory()
        let configuration = DockerClient.Configuration(socketPath: directory.file("dead.sock").path)
        _ = try await DockerClient.withClient(configuration: configuration) { client in
            await expectDockerError(.unreachable, containing: "dead.sock") { try await client.ping() }
        }
        #expect(throws: DockerError.self) {
            try DockerClient.Configuration(environment: ["DOCKER_HOST": "tcp://1.2.3.4:2375"])
        }
        #expect(
            try DockerClient.Configuration(environment: ["DOCKER_HOST": "unix:///tmp/x.sock"]).socketPath
                == "/tmp/x.sock")
    }
}

@Suite struct MultiplexedStreamTests {
    func frame(_ stream: UInt8, _ text: String) -> [UInt8] {
        let bytes = Array(text.utf8)
        return [stream, 0, 0, 0] + withUnsafeBytes(of: UInt32(bytes.count).bigEndian, Array.init) + bytes
    }

    @Test func decodesFramesSplitAtEveryByte() throws {
        let stream =
            frame(1, "hello") + frame(2, "") + frame(2, "world!") + frame(1, String(repeating: "z", count: 70_000))
        for split in [1, 3, 7, 8, 9, 1000] {
            var decoder = MultiplexedStreamDecoder()
            var frames: [OutputFrame] = []
            var offset = 0
            while offset < stream.count {
                let end = min(offset + split, stream.count)
                frames += try decoder.decode(ByteBuffer(bytes: stream[offset..<end]))
                offset = end
            }
            #expect(frames.count == 4, "split \(split)")
            #expect(frames.map(\.stream) == [.stdout, .stderr, .stderr, .stdout])
            #expect(String(decoding: frames[2].bytes, as: UTF8.self) == "world!")
            #expect(frames[3].bytes.count == 70_000)
            #expect(decoder.leftover == 0)
        }
        var decoder = MultiplexedStreamDecoder()
        #expect(throws: DockerError.self) { _ = try decoder.decode(ByteBuffer(bytes: [9, 0, 0, 0, 0, 0, 0, 1, 65])) }
    }

    @Test func tarArchivesAreReadableByTar() throws {
        let directory = TemporaryDirectory()
        var tar = TarArchive()
        try tar.addDirectory("bin")
        try tar.addFile("bin/run.sh", contents: Data("#!/bin/sh\necho hi\n".utf8), mode: 0o755)
        let long = String(repeating: "d", count: 90) + "/" + String(repeating: "f", count: 90) + ".txt"
        try tar.addFile(long, contents: Data(repeating: 65, count: 1025))
        try tar.finish().write(to: directory.file("a.tar"))
        let listing = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"), ["tar", "-tvf", directory.file("a.tar").path],
            environment: ProcessInfo.processInfo.environment)
        #expect(listing.exitCode == 0)
        #expect(listing.stdout.contains("rwxr-xr-x") && listing.stdout.contains("bin/run.sh"))
        #expect(listing.stdout.contains(long) && listing.stdout.contains("1025"))
    }
}

func expectDockerError(
    _ code: DockerError.Code, containing text: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async {
    do {
        try await body()
        Issue.record("expected a DockerError \(code)", sourceLocation: sourceLocation)
    } catch let error as DockerError {
        #expect(error.code == code, sourceLocation: sourceLocation)
        #expect(error.message.contains(text), "\(error.message)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
}

@Suite(
    .enabled(if: DockerTestEnvironment.shouldRun && LocalRegistry.shouldRun, "no Docker engine or docker-registry"),
    .serialized)
struct RegistryPullTests {
    @Test func pullsFromALoopbackRegistryWithLayerProgress() async throws {
        let registry = try LocalRegistry()
        defer { registry.stop() }
        try await DockerClient.withClient(configuration: DockerClient.forTests()) { client in
            // An image with a layer of its own, so that the pull has something to download.
            let remote = "\(registry.host)/cmm-test/pulled:1"
            var tar = TarArchive()
            try tar.addFile("Dockerfile", contents: Data("FROM scratch\nCOPY blob /blob\n".utf8))
            try tar.addFile("blob", contents: Data((0..<300_000).map { _ in UInt8.random(in: 0...255) }))
            _ = try await client.buildImage(
                context: tar.finish(), tags: [remote],
                labels: Labels.make(kind: "test-image", version: ToolVersion.current))
            try await client.pushImage(remote)
            try await client.removeImage(remote, force: true)
            #expect(try await client.inspectImage(remote) == nil)
            let events = LockedBox<[String]>([])
            try await client.pullImage(remote) { progress in
                events.append(
                    "\(progress.layer ?? "-") \(progress.status) \(progress.current ?? -1)/\(progress.total ?? -1)")
            }
            #expect(try await client.inspectImage(remote) != nil)
            #expect(
                events.value.contains { $0.contains("Pull complete") || $0.contains("Already exists") },
                "\(events.value)")
            #expect(events.value.contains { $0.contains("Downloading") && !$0.hasSuffix("-1/-1") }, "\(events.value)")
            #expect(events.value.contains { $0.contains("Downloaded newer image") })
            try await client.removeImage(remote, force: true)
            await expectDockerError(.notFound, containing: "not found") {
                try await client.pullImage("\(registry.host)/cmm-test/never-pushed:1")
            }
        }
    }
}
