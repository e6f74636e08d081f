#!/usr/bin/python3
"""A minimal WHIP/WHEP client built on GStreamer's webrtcbin, an independent WebRTC stack
(ICE via libnice, DTLS via OpenSSL, SRTP via libsrtp), used by tests/interop_gst.rs to
show that roomgate works with GStreamer-based clients and not only with the demo page.

    publish   --url http://HOST:PORT/whip/ROOM  [--token T] [--seconds N] [--simulcast]
    subscribe --url http://HOST:PORT/whep/ROOM[?publisher=P] [--token T] [--seconds N]
    (either with --trickle)

Signalling follows WHIP/WHEP without trickle: gather all candidates, POST the offer
(application/sdp), apply the 201 answer, DELETE the Location when done. With --trickle,
once connected it also PATCHes one of its candidates and end-of-candidates to the
resource (RFC 9725 4.3.1, If-Match: the 201's ETag) and reports the status. Output is one
JSON object per line on stdout:

    {"event":"connected","location":...}        publisher and subscriber, once
    {"event":"trickle","status":204,...}        with --trickle, once connected
    {"event":"stats","video_frames":n,...}      subscriber, every second
    {"event":"error","status":s,"body":...}     HTTP refusal; exit code 2
    {"event":"failed","reason":...}             connection failed or timed out; exit code 3

Against a gateway on a loopback address, ICE gathers on that address (libnice skips
loopback otherwise, see Session.restrict_ice_addresses). --no-bundle-only rewrites
webrtcbin's max-bundle offer for answerers that read port 0 as a rejected m-line.

Needs Debian's GStreamer and PyGObject, run with Debian's /usr/bin/python3:
apt-get install --no-install-recommends gstreamer1.0-plugins-good
gstreamer1.0-plugins-bad gstreamer1.0-nice python3-gi gir1.2-gst-plugins-bad-1.0
gir1.2-nice-0.1
"""

import argparse
import ctypes
import ipaddress
import logging
import os
import signal
import sys
import urllib.parse

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtp", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstRtp, GstSdp, GstWebRTC, Nice  # noqa: E402
from whip_http import HttpRefused, delete_resource, emit, post_offer_etag, trickle  # noqa: E402

WIDTH, HEIGHT, FPS = 320, 240, 15
VIDEO_PT, AUDIO_PT = 96, 111
VIDEO_CAPS = f"application/x-rtp,media=video,encoding-name=VP8,payload={VIDEO_PT},clock-rate=90000"
AUDIO_CAPS = (
    f"application/x-rtp,media=audio,encoding-name=OPUS,payload={AUDIO_PT},"
    "clock-rate=48000,encoding-params=(string)2"
)
# Give up if ICE + DTLS has not connected within this long after the answer.
CONNECT_TIMEOUT = 20.0
# Give up if the offer (with every host candidate libnice gathers) is not ready this long
# after start-up.
GATHER_TIMEOUT = 10.0
# GStreamer debug categories for --debug: webrtcbin's negotiation, its ICE and DTLS glue.
# libnice logs through GLib (NICE_DEBUG, G_MESSAGES_DEBUG).
DEBUG_CATEGORIES = "webrtcbin:5,webrtcice*:5,webrtcnice*:5,dtls*:4,srtp*:4"

PUBLISH_PIPELINE = f"""
    webrtcbin name=webrtc bundle-policy=max-bundle
    videotestsrc is-live=true pattern=ball
      ! video/x-raw,width={WIDTH},height={HEIGHT},framerate={FPS}/1
      ! vp8enc deadline=1 keyframe-max-dist=30
      ! rtpvp8pay pt={VIDEO_PT} ! {VIDEO_CAPS} ! webrtc.
    audiotestsrc is-live=true wave=sine freq=440
      ! audioconvert ! audioresample ! opusenc
      ! rtpopuspay pt={AUDIO_PT} ! {AUDIO_CAPS} ! webrtc.
"""

# --simulcast: three encodings of one camera (RFC 8853), lowest first, as
# (rid, width, height, target kbit/s). Rates far apart, so that an SFU ranking layers by
# the rate they arrive at orders them as named.
SIMULCAST_LAYERS = (("q", 160, 120, 100), ("h", 320, 240, 300), ("f", 640, 480, 900))
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RID_EXT_ID = 1


def simulcast_pipeline():
    """webrtcbin 1.22 has no sendEncodings: one transceiver, one sink pad. Each layer gets
    its own encoder and payloader (so its own SSRC), tagged with its RID by an
    rtphdrextstreamid extension; rtpfunnel merges them onto the video sink pad. The
    caps on that pad carry what webrtcbin writes into the m-line: `extmap-N` becomes
    a=extmap, `rid-X=send` a=rid (GstSdp), `a-simulcast` a=simulcast."""
    branches = "".join(
        f"""
    camera. ! queue ! videoscale ! videoconvert ! video/x-raw,width={w},height={h}
      ! vp8enc deadline=1 keyframe-max-dist=30 target-bitrate={kbps * 1000}
      ! rtpvp8pay name=pay_{rid} pt={VIDEO_PT} auto-header-extension=false ! funnel."""
        for rid, w, h, kbps in SIMULCAST_LAYERS
    )
    top_w, top_h = SIMULCAST_LAYERS[-1][1:3]
    return f"""
    webrtcbin name=webrtc bundle-policy=max-bundle
    rtpfunnel name=funnel ! capsfilter name=simulcast_caps ! webrtc.
    videotestsrc is-live=true pattern=ball
      ! video/x-raw,width={top_w},height={top_h},framerate={FPS}/1 ! tee name=camera
    {branches}
    audiotestsrc is-live=true wave=sine freq=440
      ! audioconvert ! audioresample ! opusenc
      ! rtpopuspay pt={AUDIO_PT} ! {AUDIO_CAPS} ! webrtc.
"""


def configure_simulcast(pipeline):
    """Give each layer's payloader its RID extension and the funnel's output the caps
    webrtcbin builds the offer from."""
    rids = [layer[0] for layer in SIMULCAST_LAYERS]
    for rid in rids:
        ext = GstRtp.RTPHeaderExtension.create_from_uri(RID_URI)
        if ext is None:
            raise RuntimeError(f"no GStreamer RTP header extension for {RID_URI}")
        ext.set_id(RID_EXT_ID)
        ext.set_property("rid", rid)
        pipeline.get_by_name(f"pay_{rid}").emit("add-extension", ext)
    fields = "".join(f",rid-{rid}=(string)send" for rid in rids)
    caps = Gst.Caps.from_string(
        f'{VIDEO_CAPS},extmap-{RID_EXT_ID}=(string)"{RID_URI}"{fields},'
        f'a-simulcast=(string)"send {";".join(rids)}"'
    )
    pipeline.get_by_name("simulcast_caps").set_property("caps", caps)


def without_bundle_only(sdp):
    """webrtcbin's max-bundle offer gives every m-line but the first port 0 and
    a=bundle-only (RFC 8843 section 6, RFC 8829 section 5.2.1). For answerers that read
    port 0 as a rejected m-line: give those m-lines port 9 and drop a=bundle-only, which
    is what the offer would say under a balanced policy. They stay in a=group:BUNDLE."""
    out = []
    for line in sdp.splitlines():
        if line == "a=bundle-only":
            continue
        if line.startswith("m=") and line.split(" ")[1] == "0":
            kind, _, rest = line.split(" ", 2)
            line = f"{kind} 9 {rest}"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def gathering_complete(webrtc):
    state = webrtc.get_property("ice-gathering-state")
    return state == GstWebRTC.WebRTCICEGatheringState.COMPLETE


def g_object_ref(obj):
    """A C-level g_object_ref (PyGObject does not offer one)."""
    pointer = ctypes.pythonapi.PyCapsule_GetPointer
    pointer.restype = ctypes.c_void_p
    pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    gobject = ctypes.CDLL("libgobject-2.0.so.0")
    gobject.g_object_ref.restype = ctypes.c_void_p
    gobject.g_object_ref.argtypes = [ctypes.c_void_p]
    gobject.g_object_ref(pointer(obj.__gpointer__, None))


def promise_wait(webrtc, signal_name, *args):
    """Emit a promise-taking webrtcbin action signal and wait for its reply. Only from the
    main loop: webrtcbin answers on its own thread."""
    promise = Gst.Promise.new()
    webrtc.emit(signal_name, *args, promise)
    if promise.wait() != Gst.PromiseResult.REPLIED:
        raise ConnectionError(f"webrtcbin {signal_name} was not answered")
    reply = promise.get_reply()
    if reply is not None and reply.has_field("error"):
        raise ConnectionError(f"webrtcbin {signal_name}: {reply.get_value('error').message}")
    return reply


class Session:
    """One webrtcbin pipeline driven by a GLib main loop. Signals from GStreamer's
    threads are handed to the main loop with GLib.idle_add; every step that can fail
    ends the loop through finish(code)."""

    def __init__(self, args, pipeline):
        self.args = args
        self.pipeline = pipeline
        self.webrtc = pipeline.get_by_name("webrtc")
        self.loop = GLib.MainLoop()
        self.code = None
        self.resource = None
        self.etag = None
        self.negotiating = False
        self.connected = False
        self.gathered = False
        self.restrict_ice_addresses()
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering_state)
        self.webrtc.connect("notify::connection-state", self.on_connection_state)
        bus = pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)
        # SIGTERM/SIGINT end the session cleanly: run() DELETEs the resource.
        for sig in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, self.finish, 0)

    def restrict_ice_addresses(self):
        """libnice never gathers loopback addresses, and it pins each host candidate's
        socket to its interface (IP_UNICAST_IF), so unlike aioice or Chromium it cannot
        reach a gateway on 127.0.0.1 from eth0's address: its checks leave through eth0.
        Gather on the given addresses only (by default the URL's host when that is a
        loopback address); libnice takes explicitly added addresses as they are."""
        addresses = self.args.ice_address
        if addresses is None:
            host = urllib.parse.urlsplit(self.args.url).hostname or ""
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            addresses = [host if host != "localhost" else "127.0.0.1"] if loopback else []
        ice = self.webrtc.get_property("ice-agent")
        if ice.__grefcount__ < 2:
            # webrtcbin 1.22 keeps its GstWebRTCICE floating, so PyGObject sinks it and
            # the wrapper's end would drop webrtcbin's only reference: give that one back.
            g_object_ref(ice)
        agent = ice.get_property("agent")
        for ip in addresses:
            addr = Nice.Address.new()
            if not addr.set_from_string(ip):
                raise ValueError(f"not an IP address: {ip}")
            agent.add_local_address(addr)
            logging.debug("ICE gathers on %s", ip)

    def run(self):
        self.pipeline.set_state(Gst.State.PLAYING)
        self.timer(GATHER_TIMEOUT, self.gather_timeout)
        self.loop.run()
        if self.resource is not None:
            delete_resource(self.resource, token=self.args.token)
        self.pipeline.get_bus().remove_signal_watch()
        self.pipeline.set_state(Gst.State.NULL)
        return self.code

    def timer(self, seconds, fn):
        GLib.timeout_add(int(seconds * 1000), fn)

    def finish(self, code):
        """End the main loop with exit code `code` (the first one wins)."""
        if self.code is None:
            self.code = code
            self.loop.quit()
        return GLib.SOURCE_REMOVE

    def fail(self, reason):
        emit(event="failed", reason=reason)
        self.finish(3)

    def connect_timeout(self):
        if not self.connected:
            ice = self.webrtc.get_property("ice-connection-state").value_nick
            conn = self.webrtc.get_property("connection-state").value_nick
            gathering = self.webrtc.get_property("ice-gathering-state").value_nick
            self.fail(
                f"not connected after {CONNECT_TIMEOUT:.0f} s "
                f"(ice gathering {gathering}, ice {ice}, connection {conn})"
            )
        return GLib.SOURCE_REMOVE

    # --- GStreamer-thread callbacks: hand over to the main loop ----------------------

    def on_negotiation_needed(self, _webrtc):
        GLib.idle_add(self.offer)

    def on_gathering_state(self, webrtc, _pspec):
        if gathering_complete(webrtc):
            GLib.idle_add(self.post_offer)

    def on_connection_state(self, webrtc, _pspec):
        GLib.idle_add(self.connection_changed)

    def on_error(self, _bus, message):
        err, dbg = message.parse_error()
        logging.debug("pipeline error: %s (%s)", err.message, dbg)
        GLib.idle_add(self.fail, f"pipeline error from {message.src.get_name()}: {err.message}")

    # --- main-loop steps --------------------------------------------------------------

    def offer(self):
        """Create the offer and set it locally; libnice starts gathering."""
        if self.negotiating:
            return GLib.SOURCE_REMOVE
        self.negotiating = True
        try:
            self.prepare_transceivers()
            reply = promise_wait(self.webrtc, "create-offer", None)
            offer = reply.get_value("offer")
            promise_wait(self.webrtc, "set-local-description", offer)
        except ConnectionError as e:
            self.fail(str(e))
            return GLib.SOURCE_REMOVE
        if gathering_complete(self.webrtc):
            GLib.idle_add(self.post_offer)
        return GLib.SOURCE_REMOVE

    def prepare_transceivers(self):
        """Publisher: the transceivers webrtcbin made for the linked sink pads only send."""
        if self.args.mode != "publish":
            return
        for pad in self.webrtc.sinkpads:
            trans = pad.get_property("transceiver")
            trans.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)

    def gather_timeout(self):
        if not self.gathered:
            gathering = self.webrtc.get_property("ice-gathering-state").value_nick
            self.fail(
                f"no offer with every candidate within {GATHER_TIMEOUT:.0f} s "
                f"(negotiation started: {self.negotiating}, ice gathering {gathering})"
            )
        return GLib.SOURCE_REMOVE

    def post_offer(self):
        """Every candidate is in: POST the offer and apply the answer."""
        if self.gathered or self.code is not None:
            return GLib.SOURCE_REMOVE
        self.gathered = True
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        if self.args.no_bundle_only:
            offer = without_bundle_only(offer)
        logging.debug("offer:\n%s", offer)
        if "a=candidate:" not in offer:
            # libnice skips loopback addresses unless told to use one.
            self.fail(
                "libnice gathered no host candidate: it skips loopback addresses unless "
                "--ice-address names one"
            )
            return GLib.SOURCE_REMOVE
        try:
            answer, resource, self.etag = post_offer_etag(
                self.args.url, offer, token=self.args.token
            )
        except HttpRefused as e:
            emit(event="error", status=e.status, body=e.body)
            self.finish(2)
            return GLib.SOURCE_REMOVE
        except OSError as e:
            self.fail(f"POST {self.args.url}: {e}")
            return GLib.SOURCE_REMOVE
        self.resource = resource
        logging.debug("answer:\n%s", answer)
        result, sdp = GstSdp.SDPMessage.new_from_text(answer)
        if result != GstSdp.SDPResult.OK:
            self.fail(f"cannot parse the answer SDP ({result.value_nick})")
            return GLib.SOURCE_REMOVE
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        try:
            promise_wait(self.webrtc, "set-remote-description", desc)
        except ConnectionError as e:
            self.fail(str(e))
            return GLib.SOURCE_REMOVE
        self.timer(CONNECT_TIMEOUT, self.connect_timeout)
        return GLib.SOURCE_REMOVE

    def connection_changed(self):
        state = self.webrtc.get_property("connection-state")
        logging.debug("connection state %s", state.value_nick)
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and not self.connected:
            self.connected = True
            emit(event="connected", location=self.resource)
            if self.args.trickle:
                local = self.webrtc.get_property("local-description").sdp.as_text()
                trickle(self.resource, local, etag=self.etag, token=self.args.token)
            self.on_connected()
        elif state in (
            GstWebRTC.WebRTCPeerConnectionState.FAILED,
            GstWebRTC.WebRTCPeerConnectionState.CLOSED,
        ):
            self.fail(f"connection {state.value_nick}")
        return GLib.SOURCE_REMOVE

    def on_connected(self):
        if self.args.seconds is not None:
            self.timer(self.args.seconds, lambda: self.finish(0))


class Publisher(Session):
    def __init__(self, args):
        if args.simulcast:
            pipeline = Gst.parse_launch(simulcast_pipeline())
            configure_simulcast(pipeline)
        else:
            pipeline = Gst.parse_launch(PUBLISH_PIPELINE)
        super().__init__(args, pipeline)


class Subscriber(Session):
    """Receives VP8 and Opus, decodes both, and counts decoded frames."""

    def __init__(self, args):
        pipeline = Gst.Pipeline.new("subscriber")
        webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
        webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        pipeline.add(webrtc)
        super().__init__(args, pipeline)
        self.counts = {"video_frames": 0, "audio_frames": 0, "width": 0, "height": 0}
        self.video_sink = None
        webrtc.connect("pad-added", self.on_pad_added)
        recvonly = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
        for caps in (AUDIO_CAPS, VIDEO_CAPS):
            webrtc.emit("add-transceiver", recvonly, Gst.Caps.from_string(caps))

    def on_pad_added(self, _webrtc, pad):
        """A webrtcbin src pad appears once RTP of a new SSRC arrives (streaming thread)."""
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        media = caps.get_structure(0).get_value("media")
        if media == "video":
            desc = "queue ! rtpvp8depay request-keyframe=true ! vp8dec ! fakesink name=sink"
            key = "video_frames"
        else:
            desc = "queue ! rtpopusdepay ! opusdec ! fakesink name=sink"
            key = "audio_frames"
        logging.debug("receiving %s on %s: %s", media, pad.get_name(), caps.to_string())
        branch = Gst.parse_bin_from_description(desc, True)
        sink = branch.get_by_name("sink")
        # Count what comes out of the decoder; no clock sync needed for that.
        sink.set_property("sync", False)
        sink.set_property("async", False)
        sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self.count, key)
        if media == "video":
            self.video_sink = sink
        self.pipeline.add(branch)
        branch.sync_state_with_parent()
        if pad.link(branch.get_static_pad("sink")) != Gst.PadLinkReturn.OK:
            GLib.idle_add(self.fail, f"cannot link {pad.get_name()} ({caps.to_string()})")

    def count(self, _pad, _info, key):
        self.counts[key] += 1
        return Gst.PadProbeReturn.OK

    def on_connected(self):
        # One report a second, the last one when --seconds are up.
        self.reports = 0
        self.timer(1.0, self.report)

    def report(self):
        if self.video_sink is not None:
            caps = self.video_sink.get_static_pad("sink").get_current_caps()
            if caps is not None:
                s = caps.get_structure(0)
                self.counts["width"] = s.get_value("width")
                self.counts["height"] = s.get_value("height")
        emit(event="stats", **self.counts)
        self.reports += 1
        if self.args.seconds is not None and self.reports >= self.args.seconds:
            self.finish(0)
            return GLib.SOURCE_REMOVE
        return GLib.SOURCE_CONTINUE


def main(args):
    if args.debug:
        os.environ.setdefault("NICE_DEBUG", "nice")
        os.environ.setdefault("G_MESSAGES_DEBUG", "libnice")
        # GLib writes debug messages to stdout by default, where the JSON events go.
        GLib.log_writer_default_set_use_stderr(True)
    Gst.init(None)
    if args.debug:
        Gst.debug_set_threshold_from_string(DEBUG_CATEGORIES, False)
    session = (Publisher if args.mode == "publish" else Subscriber)(args)
    return session.run()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["publish", "subscribe"])
    p.add_argument("--url", required=True, help="WHIP or WHEP endpoint URL")
    p.add_argument("--token", help="bearer token (roomgate --auth-token)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until killed)")
    p.add_argument(
        "--ice-address",
        action="append",
        metavar="IP",
        help="gather ICE candidates on this address only (repeatable; default: the "
        "URL's host if it is a loopback address, else every non-loopback address)",
    )
    p.add_argument(
        "--no-bundle-only",
        action="store_true",
        help="send bundle-only m-lines with port 9 instead of port 0 (see without_bundle_only)",
    )
    p.add_argument(
        "--simulcast",
        action="store_true",
        help="publish: send three VP8 layers with rids (see SIMULCAST_LAYERS)",
    )
    p.add_argument(
        "--trickle",
        action="store_true",
        help="once connected, PATCH a candidate and end-of-candidates (RFC 9725 trickle)",
    )
    p.add_argument("--debug", action="store_true", help="debug logs (webrtcbin, libnice, SDP)")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    sys.exit(main(args))
