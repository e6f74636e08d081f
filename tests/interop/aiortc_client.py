#!/usr/bin/env python3
"""A minimal WHIP/WHEP client built on aiortc, an independent WebRTC stack (its own ICE
via aioice, DTLS via OpenSSL/cryptography, SRTP via pylibsrtp), used by tests/interop.rs
to show that roomgate works with standard clients and not only with the demo page.

    publish   --url http://HOST:PORT/whip/ROOM  [--token T] [--seconds N] [--trickle]
    subscribe --url http://HOST:PORT/whep/ROOM[?publisher=P] [--token T] [--seconds N] [--trickle]

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

Needs: pip install aiortc (pulls in av, aioice, pylibsrtp, cryptography).
"""

import argparse
import asyncio
import fractions
import logging
import math
import signal
import sys
import time

import av
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from whip_http import HttpRefused, delete_resource, emit, post_offer_etag, trickle

WIDTH, HEIGHT, FPS = 320, 240, 15
VIDEO_CLOCK = 90000
AUDIO_RATE, AUDIO_PTIME = 48000, 0.020
# Give up if ICE + DTLS has not connected within this long after the answer.
CONNECT_TIMEOUT = 20.0


async def in_thread(fn, *args, **kwargs):
    """Run blocking HTTP off the event loop, so media keeps flowing meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: fn(*args, **kwargs)
    )


class PaceClock:
    """Releases frames in real time, like a capture device would."""

    def __init__(self):
        self.start = None

    async def wait(self, seconds_since_start):
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + seconds_since_start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class PatternVideoTrack(MediaStreamTrack):
    """Synthetic camera: diagonal luma bands that move every frame, and a chroma tint that
    drifts, so the VP8 encoder produces real keyframes and non-trivial delta frames."""

    kind = "video"

    def __init__(self):
        super().__init__()
        self.count = 0
        self.clock = PaceClock()
        # Repeated band pattern: a WIDTH-wide window starting anywhere in the first
        # 256 bytes is one slice.
        ramp = bytes((i * 4) % 256 if (i // 32) % 2 else 255 - (i * 4) % 256 for i in range(256))
        self.luma = ramp * ((WIDTH + 512) // 256 + 1)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        n = self.count
        self.count += 1
        await self.clock.wait(n / FPS)
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        y_plane, u_plane, v_plane = frame.planes
        shift = (n * 3) % 256
        pad = y_plane.line_size - WIDTH
        rows = []
        for y in range(HEIGHT):
            o = (shift + y) % 256
            rows.append(self.luma[o : o + WIDTH] + b"\x00" * pad)
        y_plane.update(b"".join(rows))
        u = int(128 + 100 * math.sin(n / 20.0)) & 0xFF
        v = int(128 + 100 * math.cos(n / 27.0)) & 0xFF
        u_plane.update(bytes([u]) * u_plane.buffer_size)
        v_plane.update(bytes([v]) * v_plane.buffer_size)
        frame.pts = n * (VIDEO_CLOCK // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class SineAudioTrack(MediaStreamTrack):
    """Synthetic microphone: a 440 Hz tone, 20 ms frames of 48 kHz mono s16."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.count = 0
        self.clock = PaceClock()
        self.samples = int(AUDIO_RATE * AUDIO_PTIME)
        # One second of 440 Hz is a whole number of periods, so it loops seamlessly.
        self.tone = b"".join(
            int(8000 * math.sin(2 * math.pi * 440 * i / AUDIO_RATE)).to_bytes(
                2, "little", signed=True
            )
            for i in range(AUDIO_RATE)
        )

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        n = self.count
        self.count += 1
        await self.clock.wait(n * AUDIO_PTIME)
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.samples)
        base = n * self.samples
        start = 2 * (base % AUDIO_RATE)
        pcm = self.tone[start : start + 2 * self.samples]
        plane = frame.planes[0]
        plane.update(pcm + b"\x00" * (plane.buffer_size - len(pcm)))
        frame.pts = base
        frame.sample_rate = AUDIO_RATE
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


async def wait_gathered(pc):
    if pc.iceGatheringState == "complete":
        return
    done = asyncio.Event()

    @pc.on("icegatheringstatechange")
    def _():
        if pc.iceGatheringState == "complete":
            done.set()

    await done.wait()


async def negotiate(pc, url, token):
    """Offer with every candidate included, POST it, apply the answer; returns the
    absolute resource URL from Location and the resource's ETag."""
    await pc.setLocalDescription(await pc.createOffer())
    # aiortc gathers inside setLocalDescription; this is a no-op unless that changes.
    await wait_gathered(pc)
    offer = pc.localDescription.sdp
    logging.debug("offer:\n%s", offer)
    if "a=candidate:" not in offer:
        # aioice never offers 127.0.0.1 (nor ::1); on a host with only loopback it has
        # nothing to check from, and the connection would just sit in state "new".
        raise ConnectionError(
            "aioice gathered no host candidate: it skips loopback addresses, so the "
            "host needs another IPv4/IPv6 address (it may still talk to 127.0.0.1)"
        )
    answer, resource, etag = await in_thread(post_offer_etag, url, offer, token=token)
    logging.debug("answer:\n%s", answer)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return resource, etag


async def connected(args, pc, resource, etag):
    emit(event="connected", location=resource)
    if args.trickle:
        await in_thread(trickle, resource, pc.localDescription.sdp, etag=etag, token=args.token)


async def wait_connected(pc):
    state = asyncio.Event()

    @pc.on("connectionstatechange")
    def _():
        state.set()

    deadline = time.monotonic() + CONNECT_TIMEOUT
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"connection {pc.connectionState}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionError(
                f"not connected after {CONNECT_TIMEOUT:.0f} s "
                f"(ice {pc.iceConnectionState}, connection {pc.connectionState})"
            )
        state.clear()
        try:
            await asyncio.wait_for(state.wait(), remaining)
        except asyncio.TimeoutError:
            pass


async def until(seconds, pc):
    """Sleep for `seconds` (forever if None), returning early if the connection dies."""
    end = None if seconds is None else time.monotonic() + seconds
    while end is None or time.monotonic() < end:
        if pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"connection {pc.connectionState}")
        await asyncio.sleep(0.2 if end is None else min(0.2, max(0.0, end - time.monotonic())))


def new_peer_connection():
    # roomgate requires BUNDLE (and rtcp-mux, which aiortc always offers).
    return RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


async def publish(args, pc):
    pc.addTransceiver(SineAudioTrack(), direction="sendonly")
    pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
    resource, etag = await negotiate(pc, args.url, args.token)
    try:
        await wait_connected(pc)
        await connected(args, pc, resource, etag)
        await until(args.seconds, pc)
    finally:
        await delete(resource, args.token)


async def subscribe(args, pc):
    counts = {"video_frames": 0, "audio_frames": 0, "width": 0, "height": 0}
    consumers = []

    async def consume(track):
        key = "video_frames" if track.kind == "video" else "audio_frames"
        try:
            while True:
                frame = await track.recv()
                counts[key] += 1
                if track.kind == "video":
                    counts["width"], counts["height"] = frame.width, frame.height
        except MediaStreamError:
            pass

    @pc.on("track")
    def on_track(track):
        consumers.append(asyncio.ensure_future(consume(track)))

    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    resource, etag = await negotiate(pc, args.url, args.token)
    try:
        await wait_connected(pc)
        await connected(args, pc, resource, etag)
        end = None if args.seconds is None else time.monotonic() + args.seconds
        while end is None or time.monotonic() < end:
            step = 1.0 if end is None else min(1.0, end - time.monotonic())
            await until(max(step, 0.0), pc)
            emit(event="stats", **counts)
    finally:
        for c in consumers:
            c.cancel()
        await delete(resource, args.token)


async def delete(resource, token):
    await in_thread(delete_resource, resource, token=token)


async def main(args):
    # SIGTERM/SIGINT end the session cleanly: the running mode's `finally` DELETEs it.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    pc = new_peer_connection()
    try:
        await (publish if args.mode == "publish" else subscribe)(args, pc)
        return 0
    except asyncio.CancelledError:
        return 0
    except HttpRefused as e:
        emit(event="error", status=e.status, body=e.body)
        return 2
    except (ConnectionError, OSError) as e:
        emit(event="failed", reason=str(e))
        return 3
    finally:
        await pc.close()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["publish", "subscribe"])
    p.add_argument("--url", required=True, help="WHIP or WHEP endpoint URL")
    p.add_argument("--token", help="bearer token (roomgate --auth-token)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until killed)")
    p.add_argument(
        "--trickle",
        action="store_true",
        help="once connected, PATCH a candidate and end-of-candidates (RFC 9725 trickle)",
    )
    p.add_argument("--debug", action="store_true", help="debug logs (aioice, aiortc, SDP)")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    sys.exit(asyncio.run(main(args)))
