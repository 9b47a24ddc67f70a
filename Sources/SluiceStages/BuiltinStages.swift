import SluiceStageAPI

/// The stages that ship with Sluice, by the name `use = "..."` selects.
public enum BuiltinStages {
    public static let all: [StageFactory] = [
        AccessStage.factory,
        SizeLimitStage.factory,
        HeaderChecksStage.factory,
        SPFStage.factory,
        DKIMVerifyStage.factory,
        DKIMSignStage.factory,
        DMARCStage.factory,
        SpamStage.factory,
        MilterStage.factory,
    ]
}
