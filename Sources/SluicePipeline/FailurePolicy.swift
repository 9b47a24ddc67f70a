import SMTPCore
import SluiceStageAPI

/// What happens when a stage throws or runs past its timeout (`on_error` in `[[stage]]`).
public enum FailurePolicy: String, Sendable, CaseIterable {
    /// 451 4.3.0: the client retries later. The default.
    case tempfail
    /// Treat the stage as if it said `continue`.
    case accept
    /// 554 5.3.0: refuse permanently.
    case reject

    func verdict(stage: String, why: String) -> StageVerdict {
        switch self {
        case .tempfail: .tempfail(451, "4.3.0", "Error: temporary failure in stage \(stage)")
        case .accept: .continue
        case .reject: .reject(554, "5.3.0", "Error: stage \(stage) failed")
        }
    }
}
