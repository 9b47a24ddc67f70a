import SMTPCore
import Testing

@Suite("IDNA")
struct IDNATests {
    @Test(arguments: [
        ("bücher.example.net", "xn--bcher-kva.example.net"),
        ("MÜNCHEN.de", "xn--mnchen-3ya.de"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("παράδειγμα.δοκιμή", "xn--hxajbheg2az3al.xn--jxalpdlp"),
        ("ascii.example", "ascii.example"),
        ("日本語.jp", "xn--wgv71a119e.jp"),
    ])
    func aLabels(_ unicode: String, _ ascii: String) {
        #expect(IDNA.toASCII(unicode) == ascii)
    }

    @Test func tooLongALabelIsRefused() {
        #expect(IDNA.toASCII(String(repeating: "ü", count: 60) + ".example") == nil)
    }
}
