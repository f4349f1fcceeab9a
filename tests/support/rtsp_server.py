"""A real RTSP server on 127.0.0.1 for defectflow's stream tests.

Serves live H.264 (videotestsrc, x264enc) at rtsp://127.0.0.1:PORT/cam and prints
"ready" once it listens; with a recording (an H.264 MP4), serves that instead, at its
frame rate, from its start for each client. Usage: rtsp_server.py PORT [FILE.mp4]
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball "
    "! video/x-raw,width=320,height=180,framerate=15/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bframes=0 "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)

RECORDING = "( filesrc location={} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"


def main() -> None:
    port = sys.argv[1]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    if len(sys.argv) > 2:
        factory.set_launch(RECORDING.format(sys.argv[2]))
        factory.set_shared(False)
    else:
        factory.set_launch(PIPELINE)
        factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
