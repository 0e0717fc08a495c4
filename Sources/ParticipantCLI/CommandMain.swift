import ArgumentParser
import Foundation
import Participant

/// How every command of this tool is run and how its errors end the process.
package enum CommandMain {
    /// Parses and runs a command. Called explicitly because, from another module, `main()`
    /// resolves to ArgumentParser's synchronous overload, which refuses async commands.
    package static func run(_ root: any AsyncParsableCommand.Type, arguments: [String]? = nil) async {
        // A closed pipe (`… | head`) must end output quietly, not kill the process mid-job.
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try await root.asyncParseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CLIError {
            Output.note("Error: \(error.message)")  // as ArgumentParser prints the others
            Foundation.exit(error.exitCode)
        } catch let error as CocoaError {
            Output.note("Error: \(describe(error))")
            Foundation.exit(1)
        } catch {
            if let message = DiskFull.message(
                for: error, paths: ParticipantPaths(environment: ProcessInfo.processInfo.environment))
            {
                Output.note("Error: \(message)")
                Foundation.exit(1)
            }
            // A failure's message may quote the market or a peer: it goes out through
            // `Output.note` like every other. Help and `CleanExit` are ArgumentParser's to print.
            let code = root.exitCode(for: error)
            guard code != .success else { root.exit(withError: error) }
            let message = root.fullMessage(for: error)
            if !message.isEmpty { Output.note(message) }
            Foundation.exit(code.rawValue)
        }
    }

    /// A file error as a person reads it: the path and the system's reason, not Foundation's dump.
    static func describe(_ error: CocoaError) -> String {
        let path = error.filePath ?? error.url?.path ?? "a file"
        if let underlying = error.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return "\(path): \(String(cString: strerror(Int32(underlying.code))))"
        }
        switch error.code {
        case .fileNoSuchFile, .fileReadNoSuchFile: return "\(path): No such file or directory"
        case .fileWriteNoPermission, .fileReadNoPermission: return "\(path): Permission denied"
        case .fileWriteOutOfSpace: return "\(path): No space left on device"
        default: return "\(path): file error \(error.code.rawValue)"
        }
    }
}
