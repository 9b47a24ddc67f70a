import SluiceStageAPI

extension [TraceEntry] {
    /// Appends `entries`, folding a data-phase `continue` into the same stage's earlier one
    /// (its time added), so a long message's body chunks make one line per stage, not one per
    /// chunk.
    public mutating func appendFoldingData(_ entries: [TraceEntry]) {
        for entry in entries {
            if entry.phase == StagePhase.data.rawValue, entry.outcome == "continue",
               let i = lastIndex(where: { $0.phase == entry.phase && $0.stage == entry.stage && $0.outcome == entry.outcome }) {
                self[i].micros += entry.micros
            } else {
                append(entry)
            }
        }
    }
}
