import ArgumentParser
import Foundation
import SluiceRuntime
import SluiceServer
import SluiceStageAPI

/// `sluice passwd USER`: adds or updates a user of `[auth] users` with a crypt(3) hash.
struct Passwd: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add a user to the [auth] users file, or change a password. The password is read from stdin (prompted on a terminal)."
    )
    @Option(help: "The configuration file whose [auth] users file is used (when --file is not given).")
    var config = "pipeline.conf"
    @Option(help: "The users file to write.") var file: String?
    @Option(help: "Hash: yescrypt (default), bcrypt or sha512crypt.") var algorithm = "yescrypt"
    @Flag(help: "Remove the user instead.") var delete = false
    @Argument(help: "The user name (often the email address).") var user: String

    func run() throws {
        guard !user.isEmpty, !user.contains(":"), !user.contains("\n"), !user.hasPrefix("#") else {
            throw Failure("'\(user)' cannot be a user name (no ':', newline or leading '#')")
        }
        let path: String
        if let file {
            path = file
        } else {
            let loaded: GatewayConfig
            do { loaded = try GatewayConfig.load(path: config) } catch let error as ConfigError { throw Failure("\(error)") }
            guard let auth = loaded.auth else { throw Failure("\(config) has no [auth] users file (or give --file)") }
            path = auth.usersFile
        }
        var lines = (PasswdFile.read(path) ?? "").split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        let index = lines.firstIndex { $0.split(separator: ":", maxSplits: 1).first.map(String.init) == user }
        if delete {
            guard let index else { throw Failure("\(user) is not in \(path)") }
            lines.remove(at: index)
        } else {
            let scheme: String
            switch algorithm {
            case "yescrypt": scheme = "$y$"
            case "bcrypt": scheme = "$2b$"
            case "sha512crypt": scheme = "$6$"
            default: throw Failure("--algorithm must be yescrypt, bcrypt or sha512crypt")
            }
            let password = try readPassword()
            guard let hash = PasswdFile.hash(password, scheme: scheme) else { throw Failure("libxcrypt could not hash with \(algorithm)") }
            let entry = "\(user):\(hash)"
            if let index { lines[index] = entry } else { lines.append(entry) }
        }
        // Written beside the file and renamed over it, so a running gateway never reads half a file.
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        let tmp = path + ".tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: Data((lines.joined(separator: "\n") + "\n").utf8),
                                             attributes: [.posixPermissions: 0o640]) else {
            throw Failure("cannot write \(tmp)")
        }
        guard rename(tmp, path) == 0 else { throw Failure("cannot replace \(path): \(String(cString: strerror(errno)))") }
        print(delete ? "removed \(user) from \(path)" : "\(index == nil ? "added" : "updated") \(user) in \(path)")
    }

    private func readPassword() throws -> String {
        if isatty(0) != 0 {
            guard let first = getpass("Password: ").map({ String(cString: $0) }),
                  let second = getpass("Again: ").map({ String(cString: $0) }) else { throw Failure("no password") }
            guard first == second else { throw Failure("the passwords differ") }
            guard !first.isEmpty else { throw Failure("empty password") }
            return first
        }
        guard let line = readLine(strippingNewline: true), !line.isEmpty else { throw Failure("no password on stdin") }
        return line
    }
}
