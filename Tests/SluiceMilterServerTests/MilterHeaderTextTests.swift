import SluiceStageAPI
import Testing
@testable import SluiceMilterServer

/// Header values between the milter protocol (LF folding, leading space per SMFIP_HDR_LEADSPC)
/// and `HeaderField` (raw value, CRLF folding).
@Suite("MilterHeaderText")
struct MilterHeaderTextTests {
    @Test func withLeadingSpaceTheValueIsRaw() {
        #expect(MilterHeaderText.field(name: "Subject", value: " hi", leadingSpace: true) == HeaderField(name: "Subject", value: " hi"))
        #expect(MilterHeaderText.field(name: "Subject", value: "hi", leadingSpace: true) == HeaderField(name: "Subject", value: "hi"))
    }

    @Test func withoutLeadingSpaceOneIsPutBack() {
        #expect(MilterHeaderText.field(name: "Subject", value: "hi", leadingSpace: false) == HeaderField(name: "Subject", value: " hi"))
        #expect(MilterHeaderText.field(name: "X", value: "\tindented", leadingSpace: false) == HeaderField(name: "X", value: "\tindented"))
    }

    @Test func foldingBecomesCRLF() {
        let f = MilterHeaderText.field(name: "Received", value: " from a\n\tby b\r\n\tid c", leadingSpace: true)
        #expect(f.value == " from a\r\n\tby b\r\n\tid c")
        #expect(f.unfoldedValue == "from a\tby b\tid c")
    }

    @Test func valuesGoOutWithLFFolding() {
        let f = HeaderField(name: "Authentication-Results", value: " mx.example.test;\r\n\tspf=pass smtp.mailfrom=a@b")
        #expect(MilterHeaderText.value(of: f, leadingSpace: true) == " mx.example.test;\n\tspf=pass smtp.mailfrom=a@b")
        #expect(MilterHeaderText.value(of: f, leadingSpace: false) == "mx.example.test;\n\tspf=pass smtp.mailfrom=a@b")
    }

    @Test func aValueWithoutTheSpaceKeepsItsFirstCharacter() {
        #expect(MilterHeaderText.value(of: HeaderField(name: "X", value: "v"), leadingSpace: false) == "v")
        #expect(MilterHeaderText.value(of: HeaderField(name: "X", value: "\tv"), leadingSpace: false) == "\tv")
    }

    @Test func roundTripWithoutLeadingSpace() {
        for raw in [" plain", " folded\r\n\tline", " ", " a\r\n b\r\n c"] {
            let field = HeaderField(name: "X", value: raw)
            let sent = MilterHeaderText.value(of: field, leadingSpace: false)
            #expect(MilterHeaderText.field(name: "X", value: sent, leadingSpace: false) == field)
        }
    }
}
