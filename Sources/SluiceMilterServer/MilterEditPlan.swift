import SluicePipeline
import SluiceStageAPI

/// Turns the message the MTA has into the message the stages left (a `MessageDraft`) with as few
/// milter modifications as it can, in an order the MTA can apply one after another.
///
/// It compares results instead of replaying each stage's edits, so every `MessageEdit` (and the
/// fields `prependRecorded` puts on top) is covered the same way, including edits that undo or
/// repeat one another. Header fields are matched by a longest common subsequence: a field the
/// draft kept is left alone, one whose value changed at its place becomes `smfi_chgheader`, one
/// that went becomes a delete, and a new one an insert at its index (an append at the end).
struct MilterEditPlan {
    /// A recipient of the transaction and the text `xxfi_envrcpt` gave for it, which is what
    /// `smfi_delrcpt` must be given back.
    struct EnvelopeRecipient: Hashable, Sendable {
        var recipient: Recipient
        var argument: String
    }

    /// Above this many cells the header comparison gives up matching inside the part that
    /// differs and replaces it whole (still correct, just more operations).
    static let comparisonLimit = 1_000_000

    static func operations(
        headers original: [HeaderField], sender: ReversePath, recipients: [EnvelopeRecipient], draft: MessageDraft
    ) -> [MilterOperation] {
        var operations = headerOperations(from: original, to: draft.headers)
        if draft.sender != sender || !draft.senderParameters.isEmpty {
            operations.append(.changeSender(path: draft.sender.description, parameters: MilterEnvelope.text(draft.senderParameters)))
        }
        for r in recipients where !draft.recipients.contains(where: { same($0, r.recipient) }) {
            operations.append(.deleteRecipient(r.argument))
        }
        for r in draft.recipients where !recipients.contains(where: { same($0.recipient, r) }) {
            operations.append(.addRecipient(path: "<\(r.mailbox)>", parameters: MilterEnvelope.text(r.parameters)))
        }
        if let path = draft.replacementBodyPath {
            operations.append(.replaceBody(path: path))
        }
        return operations
    }

    /// Same mailbox (local part exactly, domain case-insensitively, RFC 5321 2.4) and parameters.
    private static func same(_ a: Recipient, _ b: Recipient) -> Bool {
        a.mailbox.localPart == b.mailbox.localPart && a.mailbox.normalizedDomain == b.mailbox.normalizedDomain
            && a.parameters == b.parameters
    }

    static func headerOperations(
        from original: [HeaderField], to edited: [HeaderField], limit: Int = comparisonLimit
    ) -> [MilterOperation] {
        var current = original
        var operations: [MilterOperation] = []
        var position = 0

        /// 1-based rank of `current[position]` among the fields of its name (names are case-insensitive).
        func occurrence(_ position: Int) -> Int {
            current[...position].count { $0.name.caseInsensitiveEquals(current[position].name) }
        }
        func delete() {
            operations.append(.deleteHeader(name: current[position].name, occurrence: occurrence(position)))
            current.remove(at: position)
        }
        func insert(_ field: HeaderField) {
            operations.append(position == current.count ? .addHeader(field) : .insertHeader(index: position, field))
            current.insert(field, at: position)
            position += 1
        }
        /// A run of fields that went (`gone`, at `position` on) and came (`came`): a field keeping
        /// its name is changed in place, the rest deleted or inserted.
        func replace(_ gone: [HeaderField], _ came: [HeaderField]) {
            for step in alignment(gone, came, limit: limit, equal: { $0.name.caseInsensitiveEquals($1.name) }) {
                switch step {
                case .keep(_, let j):
                    if current[position] != came[j] {
                        current[position] = came[j]
                        operations.append(.changeHeader(occurrence: occurrence(position), came[j]))
                    }
                    position += 1
                case .delete: delete()
                case .insert(let j): insert(came[j])
                }
            }
        }

        var gone: [HeaderField] = []
        var came: [HeaderField] = []
        for step in alignment(original, edited, limit: limit, equal: ==) {
            switch step {
            case .delete(let i): gone.append(original[i])
            case .insert(let j): came.append(edited[j])
            case .keep:
                replace(gone, came)
                gone = []
                came = []
                position += 1
            }
        }
        replace(gone, came)
        return operations
    }

    enum Step: Hashable {
        case keep(Int, Int)
        case delete(Int)
        case insert(Int)
    }

    /// An edit script from `a` to `b` that keeps a longest common subsequence (by `equal`), in
    /// order: deletes of a run come before its inserts. Common ends are matched first; past
    /// `limit` cells the middle is deleted and inserted whole.
    static func alignment<T>(_ a: [T], _ b: [T], limit: Int, equal: (T, T) -> Bool) -> [Step] {
        var prefix = 0
        while prefix < a.count && prefix < b.count && equal(a[prefix], b[prefix]) { prefix += 1 }
        var suffix = 0
        while suffix < a.count - prefix && suffix < b.count - prefix && equal(a[a.count - 1 - suffix], b[b.count - 1 - suffix]) {
            suffix += 1
        }
        var steps = (0..<prefix).map { Step.keep($0, $0) }
        let n = a.count - prefix - suffix
        let m = b.count - prefix - suffix
        if n > 0 && m > 0 && n * m <= limit {
            // lengths[i][j]: the longest common subsequence of a[prefix+i...] and b[prefix+j...].
            let width = m + 1
            var lengths = [Int32](repeating: 0, count: (n + 1) * width)
            for i in stride(from: n - 1, through: 0, by: -1) {
                for j in stride(from: m - 1, through: 0, by: -1) {
                    lengths[i * width + j] = equal(a[prefix + i], b[prefix + j])
                        ? lengths[(i + 1) * width + j + 1] + 1
                        : max(lengths[(i + 1) * width + j], lengths[i * width + j + 1])
                }
            }
            var (i, j) = (0, 0)
            var deletes: [Step] = []
            var inserts: [Step] = []
            while i < n || j < m {
                if i < n && j < m && equal(a[prefix + i], b[prefix + j]) && lengths[i * width + j] == lengths[(i + 1) * width + j + 1] + 1 {
                    steps += deletes + inserts
                    deletes = []
                    inserts = []
                    steps.append(.keep(prefix + i, prefix + j))
                    i += 1
                    j += 1
                } else if j < m && (i == n || lengths[i * width + j + 1] >= lengths[(i + 1) * width + j]) {
                    inserts.append(.insert(prefix + j))
                    j += 1
                } else {
                    deletes.append(.delete(prefix + i))
                    i += 1
                }
            }
            steps += deletes + inserts
        } else {
            steps += (0..<n).map { Step.delete(prefix + $0) } + (0..<m).map { Step.insert(prefix + $0) }
        }
        steps += (0..<suffix).map { Step.keep(a.count - suffix + $0, b.count - suffix + $0) }
        return steps
    }
}
