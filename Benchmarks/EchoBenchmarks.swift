import Foundation
import Hummingbird
import HummingbirdWSClient
import HummingbirdWebSocket
import Logging
import ServiceLifecycle
import TestSupport

// WebSocket echo: the server stack the market runs on (Hummingbird 2 + hummingbird-websocket,
// one connection handler like the market's) against Python's `websockets`, each driven by the
// same Swift client in the same run.

/// Round trips one at a time, then `count` messages pipelined; messages per second for each.
func echoRates(url: String, count: Int) async throws -> (oneAtATime: Double, pipelined: Double) {
    let result = LockedBox(0)
    let rates = LockedBox<[Double]>([])
    _ = try await WebSocketClient.connect(
        url: url, configuration: .init(maxFrameSize: 1 << 20), logger: Logger(label: "bench")
    ) { inbound, outbound, _ in
        var iterator = inbound.messages(maxSize: 1 << 20).makeAsyncIterator()
        let message = String(repeating: "x", count: 200)
        let start = ContinuousClock.now
        for _ in 0..<count {
            try await outbound.write(.text(message))
            _ = try await iterator.next()
        }
        rates.append(Double(count) / seconds(ContinuousClock.now - start))
        let pipelined = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for _ in 0..<count { try await outbound.write(.text(message)) }
            }
            for _ in 0..<count { _ = try await iterator.next() }
            try await group.waitForAll()
        }
        rates.append(Double(count) / seconds(ContinuousClock.now - pipelined))
        result.increment()
        try await outbound.close(.normalClosure, reason: nil)
    }
    guard result.value == 1 else { throw MarketEchoError.incomplete }
    return (rates.value[0], rates.value[1])
}

enum MarketEchoError: Error { case incomplete }

func echoBenchmarks() async throws {
    let count = Int(ProcessInfo.processInfo.environment["CMM_BENCH_ECHO"] ?? "5000") ?? 5000
    // Ours: an echo route on the same stack, in this process (as the market serves /market).
    let router = Router(context: BasicWebSocketRequestContext.self)
    router.ws("/echo") { inbound, outbound, _ in
        for try await message in inbound.messages(maxSize: 1 << 20) {
            if case .text(let text) = message { try await outbound.write(.text(text)) }
        }
    }
    let portBox = LockedBox<[Double]>([])
    let app = Application(
        router: router, server: .http1WebSocketUpgrade(webSocketRouter: router),
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { portBox.append(Double($0.localAddress?.port ?? 0)) }, logger: Logger(label: "bench.echo"))
    let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "bench.echo")))
    let running = Task { try await group.run() }
    while portBox.value.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
    let ours = try await echoRates(url: "ws://127.0.0.1:\(Int(portBox.value[0]))/echo", count: count)
    await group.triggerGracefulShutdown()
    _ = try? await running.value

    // Baseline: Python websockets, a separate process.
    let script = """
        import asyncio, sys, websockets
        async def echo(ws):
            async for message in ws:
                await ws.send(message)
        async def main():
            async with websockets.serve(echo, "127.0.0.1", 0, max_size=1 << 20) as server:
                print(server.sockets[0].getsockname()[1], flush=True)
                await asyncio.Future()
        asyncio.run(main())
        """
    let python = Process()
    python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    python.arguments = ["python3", "-c", script]
    let out = Pipe()
    python.standardOutput = out
    python.standardError = FileHandle.nullDevice
    try python.run()
    defer {
        // SIGKILL: a SIGTERM ignored by whoever started this run would be ignored by Python too.
        kill(python.processIdentifier, SIGKILL)
        python.waitUntilExit()
    }
    var line = ""
    while !line.contains("\n") {
        let chunk = out.fileHandleForReading.availableData
        guard !chunk.isEmpty else { throw MarketEchoError.incomplete }
        line += String(decoding: chunk, as: UTF8.self)
    }
    let port = Int(line.trimmingCharacters(in: .whitespacesAndNewlines))!
    let baseline = try await echoRates(url: "ws://127.0.0.1:\(port)/", count: count)
    report(
        Row(
            name: "ws echo, one at a time (vs Python websockets)", ours: ours.oneAtATime, baseline: baseline.oneAtATime,
            unit: "msg/s", target: 1, higherIsBetter: true))
    report(
        Row(
            name: "ws echo, pipelined (vs Python websockets)", ours: ours.pipelined, baseline: baseline.pipelined,
            unit: "msg/s", target: 2, higherIsBetter: true))
}
