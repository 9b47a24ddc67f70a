import NIOCore
import NIOPosix

/// The event loop a stage's own connections should use: the one the stage is running on (the
/// session's, when the gateway runs the chain), so replies wake no other thread; otherwise the
/// next loop of the shared group.
func currentEventLoop() -> any EventLoop {
    MultiThreadedEventLoopGroup.currentEventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
}
