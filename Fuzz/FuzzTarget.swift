import Crypto
import Foundation
import MarketCore
import MarketCrypto
import MarketProtocol
import Workspace

// A coverage-guided fuzzer (libFuzzer) for the parsers that meet hostile bytes first: the
// envelope (JSON, the signed frame), its bodies, the sealed file header, sealed files and
// armor, a workspace archive (strict, as a provider reads a requester's; lenient, as it reads
// what a job left), a workspace patch (as a requester reads a result's) and applying one to a
// scratch tree. Built by `scripts/fuzz.sh` with `-sanitize=fuzzer`; `CMM_FUZZ_TARGET` picks one
// target, or the first input byte picks the parser. Every input must end in a value or a
// thrown error — never a crash, a trap or a hang.

/// One sealing key set and identity for every input (RSA key generation is slow).
let ring = KeyRing.inMemory(sealing: try! SealingKeySet.generate(at: Date()))
let verifier = EnvelopeVerifier(replayCache: FuzzReplayCache())
/// The header of a file sealed to `ring`: inputs for the chunk reader follow a header whose
/// wrapped key opens, so that the fuzzer reaches past the key exchange.
let validHeader: Data = {
    let sealed = try! Sealer.seal(Data(repeating: 7, count: 300), to: ring.current.publicKeys, purpose: .file)
    var source = DataSource(sealed)
    return try! SealedHeader.read(from: &source).encoded
}()

struct FuzzReplayCache: ReplayCache {
    func insert(peer: String, nonce: String, expiresAtMs: Int64, nowMs: Int64) -> ReplayCacheResult { .inserted }
}

/// The parser this run fuzzes (`CMM_FUZZ_TARGET`): `tar`, `patch`, `apply`, or `all` (the
/// default), where the first byte of an input picks one.
let fuzzTarget = ProcessInfo.processInfo.environment["CMM_FUZZ_TARGET"] ?? "all"

func fuzzOne(_ input: Data) {
    switch fuzzTarget {
    case "tar": return fuzzTar(input)
    case "patch": return fuzzPatch(input)
    case "apply": return fuzzApply(input)
    default: break
    }
    guard let selector = input.first else { return }
    let bytes = input.dropFirst()
    switch selector % 8 {
    case 0: envelope(Data(bytes))
    case 1:
        var source = DataSource(Data(bytes))
        _ = try? SealedHeader.read(from: &source)
    case 2: _ = try? Sealer.open(Data(bytes), keys: ring)
    case 3: _ = try? Sealer.open(validHeader + bytes, keys: ring)
    case 5: _ = try? WorkspaceTree.read(tar: Data(bytes), limits: WorkspaceLimits(maxBytes: 1 << 20, maxFiles: 1000))
    case 6:
        _ = try? WorkspaceTree.read(
            tar: Data(bytes), limits: WorkspaceLimits(maxBytes: 1 << 20, maxFiles: 1000), lenient: true)
    case 7:
        guard let patch = try? WorkspacePatch(parsing: Data(bytes), maxFiles: 1000) else { return }
        _ = patch.diffstat
    case 4:
        guard var reader = try? ArmorReader(source: DataSource(Data(bytes)), prefix: Data()) else { return }
        var total = 0
        while let chunk = try? reader.read(upTo: 4096), !chunk.isEmpty { total += chunk.count }
    default: return
    }
}

/// What the server does with a text frame before it acts: decode, check, verify, and decode
/// the body as each message type.
func envelope(_ bytes: Data) {
    guard let envelope = try? JSONDecoder().decode(Envelope.self, from: bytes) else { return }
    _ = envelope.messageType
    _ = envelope.signingBytes
    _ = try? verifier.verifySignature(envelope, signingKey: ring.identity.publicKey, nowMs: envelope.ts)
    let body = Data(envelope.body.utf8)
    let limits = WireLimits()
    func check<Body: WireBody>(_ type: Body.Type) {
        if let decoded = try? JSONDecoder().decode(type, from: body) { _ = try? decoded.validate(limits: limits) }
    }
    check(HelloBody.self)
    check(AdvertiseBody.self)
    check(PostBody.self)
    check(BidBody.self)
    check(ReasonBody.self)
    check(SealedBody.self)
    check(ResultBody.self)
    check(HeartbeatBody.self)
    check(TaskRefBody.self)
    check(BlobChunkBody.self)
}

#if CMM_LIBFUZZER
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    fuzzOne(Data(bytes: start, count: count))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's entry point as `<module>_main`: here it hands over to
/// libFuzzer's driver.
@_cdecl("Fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runDriver(&count, &arguments) { start, size in
        if let start { fuzzOne(Data(bytes: start, count: size)) }
        return 0
    }
}
#else
/// Without libFuzzer: replays the inputs given (files), so that a crash found by the fuzzer
/// can be run again under a debugger, or says how to build the fuzzer.
@main struct FuzzReplay {
    static func main() throws {
        let paths = CommandLine.arguments.dropFirst()
        guard !paths.isEmpty else {
            print("cmm-fuzz: build the coverage-guided fuzzer with scripts/fuzz.sh; this build replays files given")
            exit(64)
        }
        for path in paths { fuzzOne(try Data(contentsOf: URL(fileURLWithPath: path))) }
        print("replayed \(paths.count) input(s): no crash")
    }
}
#endif
