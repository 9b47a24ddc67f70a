import SluiceStageAPI

/// The stages that ship with Sluice, by the name `use = "..."` selects. Registered the way
/// local stages are: the StageRegistration build-tool plugin lists every `Stage` type of this
/// target that has a `static let factory`, so a new built-in stage needs no edit here.
public enum BuiltinStages {
    public static var all: [StageFactory] { SluiceStagesRegistry.all }
}
