/// The message vocabulary (`HeaderField`, `MessageBody`, ...) is part of the stage API: a stage
/// author imports only `SluiceStageAPI`.
@_exported import SluiceMessage
