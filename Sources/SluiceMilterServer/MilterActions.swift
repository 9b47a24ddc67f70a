import CMilter

/// The SMFIF_* action flags of milter negotiation (mfapi.h), as a set.
struct MilterActions: OptionSet, Hashable, Sendable {
    let rawValue: UInt
    static let addHeaders = MilterActions(rawValue: UInt(SMFIF_ADDHDRS))
    static let changeBody = MilterActions(rawValue: UInt(SMFIF_CHGBODY))
    static let addRecipients = MilterActions(rawValue: UInt(SMFIF_ADDRCPT))
    static let deleteRecipients = MilterActions(rawValue: UInt(SMFIF_DELRCPT))
    static let changeHeaders = MilterActions(rawValue: UInt(SMFIF_CHGHDRS))
    static let quarantine = MilterActions(rawValue: UInt(SMFIF_QUARANTINE))
    static let changeSender = MilterActions(rawValue: UInt(SMFIF_CHGFROM))
    static let addRecipientsWithParameters = MilterActions(rawValue: UInt(SMFIF_ADDRCPT_PAR))
    static let setSymbolList = MilterActions(rawValue: UInt(SMFIF_SETSYMLIST))

    /// Everything a Sluice stage can do to a message, and asking for macros.
    static let all: MilterActions = [
        .addHeaders, .changeBody, .addRecipients, .deleteRecipients, .changeHeaders, .quarantine,
        .changeSender, .addRecipientsWithParameters, .setSymbolList,
    ]
}
