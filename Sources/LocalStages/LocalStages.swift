import SluiceStageAPI

/// Stages written against the public stage API only, kept in this target: the place for your
/// own stages (`swift package --allow-writing-to-package-directory new-stage Name` adds one).
/// The gateway registers every factory listed here at startup.
public enum LocalStages {
    public static var all: [StageFactory] { LocalStagesRegistry.all }
}
