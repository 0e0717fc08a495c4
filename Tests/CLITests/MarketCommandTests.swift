import Foundation
import TestSupport
import Testing

/// `market …` as an operator types it.
@Suite(.serialized) struct MarketCommandTests {
    let peer = "abcdefghijklmnopqrstuvwxyz234567"

    @Test func mintRefusesBadPeersAndAmountsAndWritesNothing() throws {
        let home = TemporaryDirectory("cmm-mint")
        let db = "sqlite:" + home.file("m.sqlite").path
        for (arguments, fragment) in [
            (["--to", "nobody", "--amount", "5"], "is not a peer id"),
            (["--to", peer, "--amount", "0"], "must be above zero"),
            (["--to", peer, "--amount=-3"], "must be above zero"),
            (["--to", peer, "--amount", "99999999999999999999"], "overflows"),
            (["--to", peer, "--amount", "1.1234567"], "at most 6 decimals"),
            (["--to", peer, "--amount", "ten"], "is not an amount"),
        ] {
            let result = try CLIRunner.run(["market", "mint", "--db", db] + arguments, home: home.url)
            #expect(result.exitCode != 0)
            #expect(result.stderr.contains(fragment), "\(arguments): \(result.stderr)")
        }
        let huge = try CLIRunner.run(
            ["market", "mint", "--db", db, "--to", peer, "--amount", "9000000000000"], home: home.url)
        #expect(huge.exitCode == 1 && huge.stderr.contains("past"), "\(huge.stderr)")
        let verify = try CLIRunner.run(["market", "verify", "--db", db, "--json"], home: home.url)
        #expect(verify.exitCode == 0)
        #expect(try verify.jsonObject()["movements"] as? Int == 0, "nothing was written")
        #expect(
            try CLIRunner.run(["market", "verify", "--db", "mysql://x"], home: home.url).stderr.contains("sqlite:PATH"))
    }

    @Test func verifyNamesEachDiscrepancyOfATamperedLedger() throws {
        let home = TemporaryDirectory("cmm-verify")
        let file = home.file("m.sqlite")
        let db = "sqlite:" + file.path
        let mint = try CLIRunner.run(
            ["market", "mint", "--db", db, "--to", peer, "--amount", "12.5", "--json"], home: home.url)
        #expect(mint.exitCode == 0)
        #expect(try mint.jsonObject()["balanceMicro"] as? Int64 == 12_500_000)
        #expect(
            try CLIRunner.run(["market", "verify", "--db", db], home: home.url).stdout.contains("the books balance"))
        // Someone with the file adds credits without a ledger row.
        try Sqlite.execute(file, "UPDATE accounts SET balance = balance + 1000000 WHERE name = 'peer:\(peer)'")
        let verify = try CLIRunner.run(["market", "verify", "--db", db], home: home.url)
        #expect(verify.exitCode == 1)
        #expect(verify.stdout.contains("DISCREPANCY   balance peer:\(peer)"), "\(verify.stdout)")
        #expect(verify.stdout.contains("DISCREPANCY   sum ledger"), "\(verify.stdout)")
    }

    @Test func statusReportsARunningMarketAndSaysWhenNoneAnswers() throws {
        let home = TemporaryDirectory("cmm-status")
        let server = try MarketProcess.start(db: "sqlite:" + home.file("m.sqlite").path, home: home.url)
        defer { server.stop() }
        let status = try CLIRunner.run(["market", "status", "--url", server.url, "--json"], home: home.url)
        #expect(status.exitCode == 0, "\(status.stderr)")
        let report = try status.jsonObject()
        #expect((report["health"] as? [String: Any])?["status"] as? String == "ok")
        #expect((report["stats"] as? [String: Any])?["ledgerBalanced"] as? Bool == true)
        let text = try CLIRunner.run(["market", "status", "--url", server.url], home: home.url)
        #expect(text.stdout.contains("books        balanced"))
        let closed = try CLIRunner.run(["market", "status", "--url", "ws://127.0.0.1:9/market"], home: home.url)
        #expect(closed.exitCode == 1 && closed.stderr.contains("did not answer"), "\(closed.stderr)")
        let bad = try CLIRunner.run(["market", "status", "--url", "http://x"], home: home.url)
        #expect(bad.exitCode == 64 && bad.stderr.contains("is not a market URL: the scheme must be ws:// or wss://"))
    }

    @Test func serveRefusesBadOptionsAndStopsGracefullyOnSIGTERM() throws {
        let home = TemporaryDirectory("cmm-serve")
        let bad = try CLIRunner.run(["market", "serve", "--acceptance-window", "soon"], home: home.url)
        // Refused as the arguments are parsed: a usage error (64) naming the option and the value.
        #expect(
            bad.exitCode == 64 && bad.stderr.contains("'soon'") && bad.stderr.contains("--acceptance-window")
                && bad.stderr.contains("not a duration"), "\(bad.stderr)")
        let fee = try CLIRunner.run(["market", "serve", "--fee-bp", "20000"], home: home.url)
        #expect(fee.exitCode != 0 && fee.stderr.contains("--fee-bp 20000 must be 0…10000"))
        let batch = try CLIRunner.run(["market", "serve", "--commit-batch", "0"], home: home.url)
        #expect(batch.exitCode == 64 && batch.stderr.contains("--commit-batch 0 must be 1…10000"), "\(batch.stderr)")
        let wait = try CLIRunner.run(["market", "serve", "--commit-wait", "1s"], home: home.url)
        #expect(wait.exitCode == 64 && wait.stderr.contains("--commit-wait 1000ms must be 0ms…100ms"), "\(wait.stderr)")
        let pieces = try CLIRunner.run(["market", "serve", "--max-stored-piece-bytes", "1000"], home: home.url)
        #expect(
            pieces.exitCode == 64
                && pieces.stderr.contains("--max-stored-piece-bytes 1000 must be 1048576…1125899906842624"),
            "\(pieces.stderr)")
        let floor = try CLIRunner.run(
            ["market", "serve", "--max-stored-piece-bytes", "2097152", "--min-piece-bytes-per-task", "4194304"],
            home: home.url)
        #expect(
            floor.exitCode == 64
                && floor.stderr.contains(
                    "--min-piece-bytes-per-task 4194304 must be at most --max-stored-piece-bytes 2097152"),
            "\(floor.stderr)")
        let server = try MarketProcess.start(db: "sqlite:" + home.file("m.sqlite").path, home: home.url)
        #expect(server.stop(SIGTERM) == 0)
        #expect(server.output.contains("market stopped"))
    }

    @Test func tlsServesWssAndHTTPS() throws {
        let home = TemporaryDirectory("cmm-tls")
        let key = home.file("key.pem").path
        let cert = home.file("cert.pem").path
        let openssl = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"),
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                key,
                "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            environment: ProcessInfo.processInfo.environment)
        #expect(openssl.exitCode == 0, "\(openssl.stderr)")
        let server = try MarketProcess.start(
            db: "sqlite:" + home.file("m.sqlite").path, home: home.url, extra: ["--tls-cert", cert, "--tls-key", key])
        defer { server.stop() }
        #expect(server.output.contains("wss://127.0.0.1"))
        let https = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"),
            ["curl", "-sS", "--max-time", "10", "--cacert", cert, "https://127.0.0.1:\(server.port)/health"],
            environment: ProcessInfo.processInfo.environment)
        #expect(https.exitCode == 0 && https.stdout.contains("\"status\":\"ok\""), "\(https.stderr)")
        let plain = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"),
            ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(server.port)/health"],
            environment: ProcessInfo.processInfo.environment)
        #expect(!plain.stdout.contains("\"status\":\"ok\""), "no plain HTTP on a TLS port")
    }
}
