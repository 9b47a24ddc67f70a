import SluiceCluster
import Testing

/// `[cluster] postgres`: the URL forms taken and the ones refused, with the reason.
@Suite("ClusterSettings")
struct ClusterSettingsTests {
    @Test func aFullURL() throws {
        let p = try ClusterSettings.parse(url: "postgresql://sluice:p%40ss@db.example:6432/mail")
        #expect(p.host == "db.example" && p.port == 6432 && p.username == "sluice" && p.password == "p@ss" && p.database == "mail")
    }

    @Test func defaultsAndTheShortScheme() throws {
        let p = try ClusterSettings.parse(url: "postgres://sluice@127.0.0.1/sluice?sslmode=disable")
        #expect(p.port == 5432 && p.password == nil && p.database == "sluice")
    }

    @Test func anIPv6Host() throws {
        #expect(try ClusterSettings.parse(url: "postgresql://sluice@[::1]:5432/sluice").host == "::1")
    }

    @Test(arguments: [
        ("mysql://sluice@127.0.0.1/sluice", "the scheme is not postgresql://"),
        ("postgresql://127.0.0.1/sluice", "no user"),
        ("postgresql://sluice@127.0.0.1", "no database name"),
        ("postgresql://sluice@127.0.0.1/a/b", "no database name"),
        ("postgresql://sluice@/sluice", "no host"),
        ("127.0.0.1:5432", "scheme"),
        ("postgresql://sluice@127.0.0.1/sluice?sslmode=require", "only sslmode=disable"),
    ])
    func refused(_ url: String, _ why: String) {
        #expect {
            _ = try ClusterSettings.parse(url: url)
        } throws: { error in
            "\(error)".contains(why) && "\(error)".contains("postgresql://USER@HOST:PORT/DATABASE")
        }
    }
}
