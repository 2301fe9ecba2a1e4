"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server through PyGObject.

Run with the system python (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good; scripts/setup.sh installs them):

    /usr/bin/python3 tests/rtsp_server.py PORT 'FRAMES_GLOB' FPS

serves the JPEG files matching FRAMES_GLOB, in a loop, as a live RTP/JPEG stream at
rtsp://127.0.0.1:PORT/cam, one frame every 1/FPS s (like a camera: frames are paced by
the clock, not sent as fast as the client reads). Prints "ready" once listening.
"""

import glob
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 - after require_version

Gst.init(None)
port, pattern, fps = sys.argv[1], sys.argv[2], int(sys.argv[3])
frames = []
for path in sorted(glob.glob(pattern)):
    with open(path, "rb") as handle:
        frames.append(handle.read())
if not frames:
    sys.exit(f"no frames match {pattern}")


def media_configure(factory, media):
    source = media.get_element().get_by_name("src")
    state = {"i": 0}

    def push():
        data = frames[state["i"] % len(frames)]
        state["i"] += 1
        buffer = Gst.Buffer.new_wrapped(data)
        return source.emit("push-buffer", buffer) == Gst.FlowReturn.OK

    GLib.timeout_add(int(1000 / fps), push)


server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( appsrc name=src is-live=true do-timestamp=true format=time caps=image/jpeg,framerate={fps}/1 "
    f"! jpegparse ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
factory.connect("media-configure", media_configure)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
loop = GLib.MainLoop()
signal.signal(signal.SIGTERM, lambda *a: loop.quit())
print("ready", flush=True)
loop.run()
