import ArgumentParser
import Foundation
import MarketCore
import MarketCrypto
import Participant

struct EncryptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encrypt",
        abstract: "Seal a file to a recipient (HPKE by default); see docs/FORMATS.md.",
        discussion: """
            The recipient is a peer id you hold keys for (your own), a public key document file \
            (from `keys export-public`), or '-' to read that document from stdin. Large inputs \
            stream in chunks with constant memory.
            """
    )

    @Option(name: .long, help: ArgumentHelp("File to seal, or '-' for stdin.", valueName: "FILE")) var input: String
    @Option(name: .long, help: ArgumentHelp("PEER_ID, PUBLIC_KEY_FILE or '-'.", valueName: "RECIPIENT"))
    var recipient: String
    @Option(name: .long, help: ArgumentHelp("Where to write (default stdout).", valueName: "FILE")) var output: String?
    @Flag(name: .long, help: "ASCII armor (base64 lines) instead of binary.") var armor = false
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Suite: \(SealSuite.allCases.map(\.name).joined(separator: ", ")).", valueName: "SUITE"))
    var suite = SealSuite.hpkeX25519.name

    func validate() throws {
        if input == "-" && recipient == "-" {
            throw ValidationError("--input and --recipient cannot both be '-' (stdin)")
        }
        guard SealSuite(name: suite) != nil else {
            throw ValidationError(
                "unknown suite '\(suite)': expected one of \(SealSuite.allCases.map(\.name).joined(separator: ", "))")
        }
        if output == nil || output == "-", !armor, Output.stdoutIsTerminal {
            throw ValidationError("refusing to write binary ciphertext to a terminal: use --output FILE or --armor")
        }
    }

    func run() async throws {
        let context = CommandContext()
        let recipientKeys = try resolveRecipient(context)
        let suite = SealSuite(name: suite)!
        let inputHandle = try FileIO.openInput(input)
        var source = FileSource(handle: inputHandle)
        try FileIO.writeAtomically(to: output) { handle in
            if armor {
                var sink = ArmorWriter(sink: FileSink(handle: handle))
                try Sealer.seal(from: &source, to: &sink, recipient: recipientKeys, suite: suite, purpose: .file)
                try sink.finish()
            } else {
                var sink = FileSink(handle: handle)
                try Sealer.seal(from: &source, to: &sink, recipient: recipientKeys, suite: suite, purpose: .file)
            }
        }
    }

    func resolveRecipient(_ context: CommandContext) throws -> SealingPublicKeys {
        if recipient == "-" {
            return try PublicKeyDocument.verified(from: FileHandle.standardInput.readDataToEndOfFile()).publicKeys()
        }
        if FileManager.default.fileExists(atPath: recipient) {
            let data = try Data(contentsOf: URL(fileURLWithPath: recipient))
            do { return try PublicKeyDocument.verified(from: data).publicKeys() } catch {
                throw CLIError("recipient file \(recipient): \(error)")
            }
        }
        guard (try? PeerID(validating: recipient)) != nil else {
            throw CLIError("recipient '\(recipient)' is neither a peer id nor a public key file that exists")
        }
        let ring = try context.keyRing(database: try context.database(), config: try context.config())
        guard ring.peerID.rawValue == recipient else {
            throw CLIError(
                "no public keys known for peer \(recipient): pass their public key document "
                    + "(made by `claude-max-market keys export-public`) as --recipient FILE")
        }
        return ring.current.publicKeys
    }
}

struct DecryptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decrypt",
        abstract: "Open a sealed file with your keys; nothing is written unless every chunk authenticates."
    )

    @Option(name: .long, help: ArgumentHelp("Sealed file (binary or armored), or '-' for stdin.", valueName: "FILE"))
    var input: String
    @Option(name: .long, help: ArgumentHelp("Where to write (default stdout).", valueName: "FILE")) var output: String?

    func run() async throws {
        let context = CommandContext()
        let ring = try context.keyRing(database: try context.database(), config: try context.config())
        let inputHandle = try FileIO.openInput(input)
        var raw = FileSource(handle: inputHandle)
        let (prefix, armored) = try Armor.detect(&raw)
        do {
            try FileIO.writeAtomically(to: output) { handle in
                var sink = FileSink(handle: handle)
                if armored {
                    var source = try ArmorReader(source: raw, prefix: prefix)
                    try Sealer.open(from: &source, to: &sink, keys: ring)
                } else {
                    var source = PrefixedSource(prefix: prefix, base: raw)
                    try Sealer.open(from: &source, to: &sink, keys: ring)
                }
            }
        } catch let error as SealError {
            throw CLIError(
                "cannot decrypt \(input == "-" ? "stdin" : input): \(error.message) [\(error.code.rawValue)]")
        }
    }
}

/// Files for encrypt / decrypt: outputs go to a temp file renamed into place only on success,
/// so a failure leaves no output file (and, for stdout, prints nothing).
enum FileIO {
    static func openInput(_ path: String) throws -> FileHandle {
        if path == "-" { return FileHandle.standardInput }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CLIError("cannot read input file \(path): it does not exist or is not readable")
        }
        return handle
    }

    static func writeAtomically(to path: String?, _ body: (FileHandle) throws -> Void) throws {
        let target = path.flatMap { $0 == "-" ? nil : URL(fileURLWithPath: $0) }
        let directory = target?.deletingLastPathComponent() ?? FileManager.default.temporaryDirectory
        let temp = directory.appending(path: ".cmm-\(UUID().uuidString).partial")
        guard FileManager.default.createFile(atPath: temp.path, contents: nil, attributes: [.posixPermissions: 0o600]),
            let handle = FileHandle(forWritingAtPath: temp.path)
        else { throw CLIError("cannot create a file in \(directory.path)") }
        do {
            try body(handle)
            try handle.synchronize()
            try handle.close()
        } catch {
            try? handle.close()
            try? FileManager.default.removeItem(at: temp)
            throw error
        }
        if let target {
            guard rename(temp.path, target.path) == 0 else {
                let reason = String(cString: strerror(errno))
                try? FileManager.default.removeItem(at: temp)
                throw CLIError("cannot write \(target.path): \(reason)")
            }
        } else {
            defer { try? FileManager.default.removeItem(at: temp) }
            guard let reader = FileHandle(forReadingAtPath: temp.path) else {
                throw CLIError("cannot reread \(temp.path)")
            }
            while let chunk = try reader.read(upToCount: 1 << 16), !chunk.isEmpty {
                Output.stdout(chunk)
            }
        }
    }
}
