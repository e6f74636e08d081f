#!/usr/bin/env python3
"""Writes the checked-in seed corpora (gateway/fuzz/seeds/<target>/), built the way the
unit tests build their inputs: RFC 5769's sample request, signed Binding Requests for
the rooms of ROOM_HASH_VECTORS, the SDPs of gateway/src/sdp/testdata, RTP/RTCP packets
of every type the SFU reads, DTLS records and config files. Run it from anywhere."""
import hashlib, hmac, os, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SDP_DIR = os.path.join(HERE, "..", "..", "src", "sdp", "testdata")
PWD = b"s3cretPasswordOf24Chars0"  # fuzz_entry::stun::PWD


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def attr(t, v):
    return struct.pack(">HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def stun_request(username, extra=b"", sign=True, fp=True, tid=b"0123456789ab"):
    body = attr(0x0024, struct.pack(">I", 0x6E0001FF)) + attr(0x8029, b"\x93\x2f\xf9\xb1\x51\x26\x3b\x36")
    if username is not None:
        body = attr(0x0006, username) + body
    body += extra
    msg = struct.pack(">HH", 1, len(body)) + b"\x21\x12\xa4\x42" + tid + body
    if sign:
        head = struct.pack(">HH", 1, len(body) + 24) + msg[4:]
        mac = hmac.new(PWD, head, hashlib.sha1).digest()
        msg = head + attr(0x0008, mac)
    if fp:
        blen = len(msg) - 20 + 8
        head = struct.pack(">HH", 1, blen) + msg[4:]
        crc = (zlib.crc32(head) ^ 0x5354554E) & 0xFFFFFFFF
        msg = head + attr(0x8028, struct.pack(">I", crc))
    return msg


RFC5769 = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e20746573"
    "7420636c69656e74002400046e0001ff80290008932ff9b151263b3600060009"
    "6576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249"
    "c1b571a280280004e57a3bcf"
)

ROOMS = ["a", "lobby", "room+1", "room/2", "daily+standup", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"]

# stun: first byte = fix-up flags (1 length, 2 sign, 4 fingerprint).
put("stun", "rfc5769", b"\x00" + RFC5769)
put("stun", "signed", b"\x06" + stun_request(b"lobbyAbCd1234:cli1"))
put("stun", "use_candidate", b"\x06" + stun_request(b"lobbyAbCd1234:cli1", attr(0x0025, b"")))
put("stun", "unknown_attr", b"\x06" + stun_request(b"lobbyAbCd1234:cli1", attr(0x0033, b"abcd")))
put("stun", "wrong_session", b"\x06" + stun_request(b"otherAbCd1234:cli1"))
put("stun", "no_username", b"\x06" + stun_request(None))
put("stun", "no_integrity", b"\x04" + stun_request(b"lobbyAbCd1234:cli1", sign=False))
put("stun", "response", b"\x00" + b"\x01\x01" + stun_request(b"lobbyAbCd1234:x")[2:])

# classifier: Binding Requests for every shared room vector, and room IDs.
for i, room in enumerate(ROOMS):
    put("classifier", f"binding_{i}", stun_request(room.encode() + b"AbCd1234:cli"))
put("classifier", "rfc5769", RFC5769)
put("classifier", "room_id", b"daily-standup")
put("classifier", "room_id_max", b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcd_-")
put("classifier", "dtls", b"\x16\xfe\xfd" + b"\0" * 10)
put("classifier", "rtp", b"\x80\x60\x00\x01" + b"\0" * 8)

# sdp: the parser's test fixtures.
for name in sorted(os.listdir(SDP_DIR)):
    with open(os.path.join(SDP_DIR, name), "rb") as f:
        put("sdp", name.rsplit(".", 1)[0], f.read())
put("sdp", "fragment", b"a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 198.51.100.1 39132 typ host\r\na=end-of-candidates\r\n")


def rtp(ssrc, pt, seq, ts, payload=b"\xab\x00\x01", marker=False, ext=None):
    b0 = 0x80 | (0x10 if ext else 0)
    p = struct.pack(">BBHII", b0, pt | (0x80 if marker else 0), seq, ts, ssrc)
    if ext:
        ext = ext + b"\0" * (-len(ext) % 4)
        p += struct.pack(">HH", 0xBEDE, len(ext) // 4) + ext
    return p + payload


def rtcp(pt, count, body):
    return struct.pack(">BBH", 0x80 | count, pt, len(body) // 4) + body


VP8_KEY = b"\x90\x80\x81\x00\x50\x00\x00"
SR = rtcp(200, 1, struct.pack(">IIIIII", 0xA2, 1, 2, 3, 4, 5) + struct.pack(">IIIIII", 0x1000, 0, 10, 0, 0, 0))
RR = rtcp(201, 1, struct.pack(">I", 0x1000) + struct.pack(">IIIIII", 0xA2, 0x01000002, 100, 5, 0, 0))
SDES = rtcp(202, 1, struct.pack(">I", 0xA2) + b"\x01\x08roomgate\x00\x00")
BYE = rtcp(203, 1, struct.pack(">I", 0xA2) + b"\x03bye")
NACK = rtcp(205, 1, struct.pack(">IIHH", 0x1000, 0x1001, 100, 0x0005))
PLI = rtcp(206, 1, struct.pack(">II", 0x1000, 0x1001))
FIR = rtcp(206, 4, struct.pack(">IIIBBH", 0x1000, 0, 0xA2, 7, 0, 0))
# Transport-wide feedback: base 10, 3 packets, run-length chunk "received small", deltas.
TWCC = rtcp(205, 15, struct.pack(">IIHHIHBBB", 0x1000, 0xA2, 10, 3, 0x00000101, 0x2003, 4, 4, 4) + b"\0\0\0")
for name, data in [
    ("rtp", rtp(0xA2, 96, 1, 1000)),
    ("rtp_vp8_key", rtp(0xA2, 96, 2, 1000, VP8_KEY)),
    ("rtp_h264_idr", rtp(0xA2, 102, 3, 1000, b"\x65\x88\x84\x00")),
    ("rtp_h264_stap", rtp(0xA2, 102, 3, 1000, b"\x18\x00\x02\x67\x42\x00\x02\x68\xce")),
    ("rtp_ext", rtp(0xA2, 96, 4, 1000, VP8_KEY, ext=b"\x40" + b"1" + b"\xa0q" + b"\x31\x00\x07")),
    ("rtp_csrc_pad", bytes([0xA1, 96]) + struct.pack(">HII", 5, 1, 0xA2) + struct.pack(">I", 9) + b"\xab\xab\x00\x02"),
    ("sr", SR), ("rr", RR), ("sdes", SDES), ("bye", BYE), ("nack", NACK), ("pli", PLI),
    ("fir", FIR), ("twcc", TWCC), ("compound", SR + SDES + NACK),
]:
    put("rtp_rtcp", name, data)

# sfu: scripts (fuzz_entry::sfu). Op 2 = templated RTP (flags, ssrc idx, pt idx, seq,
# ts, [ext: rid idx, mid idx, twcc seq], chunk); 3 = feedback; 4 = clock; 0/1 raw.
def op_rtp(frm, flags, ssrc_i, pt_i, seq, ts, rid=0, mid=0, payload=b""):
    b = bytes([2, frm, flags, ssrc_i, pt_i]) + struct.pack(">HI", seq, ts)
    if flags & 1:
        b += bytes([rid, mid]) + struct.pack(">H", seq)
    return b + bytes([len(payload)]) + payload

media = b""
for seq in range(6):
    media += op_rtp(0, 2, 1, 0, seq, seq * 3000, payload=b"\x01\x02")  # P1 video VP8
    media += op_rtp(0, 0, 0, 2, seq, seq * 960, payload=b"\xfc")  # P1 audio
    media += bytes([4, 20])
put("sfu", "publisher_to_viewers", bytes([8, 2, 8, 3]) + media)
sim = b""
for seq in range(6):
    for layer in range(3):
        sim += op_rtp(1, 3, 3 + layer, 0, seq, seq * 3000, rid=layer, mid=0, payload=b"\x00" * (20 * (layer + 1)))
    sim += bytes([4, 30])
put("sfu", "simulcast", bytes([8, 2, 8, 3, 5, 1, 3]) + sim + bytes([5, 0, 1, 4, 200]))
fb = bytes([3, 2, 6, 0, 10, 0x00, 0x02]) + bytes([3, 2, 7, 1]) + bytes([3, 3, 7, 2, 1]) + bytes([3, 2, 6, 3, 5, 0, 0, 0, 0])
put("sfu", "feedback", bytes([8, 2]) + media + fb + bytes([4, 250]))
put("sfu", "raw", bytes([0, 0, len(NACK)]) + NACK + bytes([1, 2, len(SR + NACK)]) + SR + NACK + bytes([1, 0, len(SR)]) + SR)
put("sfu", "churn", bytes([6, 0, 8, 2]) + media[:40] + bytes([7, 0, 6, 2, 4, 255, 7, 2, 9]))

# dtls_filter: the filter test's records.
def rec(ty, epoch, body):
    return struct.pack(">BBBH", ty, 0xFE, 0xFD, epoch) + b"\0" * 6 + struct.pack(">H", len(body)) + body
for name, data in [
    ("handshake", rec(22, 0, b"\x01\x02\x03")), ("appdata", rec(23, 1, b"\x09" * 40)),
    ("alert", rec(21, 1, b"\x01\x00")), ("ccs", rec(20, 0, b"\x01")),
    ("two", rec(22, 0, b"\x01") + rec(23, 1, b"\x02" * 5)), ("plain_appdata", rec(23, 0, b"\x09" * 4)),
    ("trailing", rec(22, 0, b"\x01") + b"\x00\x01"),
]:
    put("dtls_filter", name, data)

# config: files like the config tests' and the README's.
for name, text in [
    ("buffers", 'recv_buffer = 4096\nsend_buffer = "1M"\n'),
    ("threads", 'threads = 3\nsteering = "connected"\nudp_bind = "127.0.0.1:7100"\n'),
    ("unknown_key", "thread = 3\n"),
    ("full", 'udp_bind = "0.0.0.0:7000"\nhttp_bind = "127.0.0.1:8080"\nthreads = 2\nsteering = "auto"\n'
             'public_ip = "203.0.113.7"\nlog_level = "info,gateway::logic=debug"\nmetrics_addr = "127.0.0.1:9100"\n'
             'auth_token = "secret"\nmax_sessions = 100\nmax_participants_per_room = "8"\ngso = "off"\n'),
    ("v6", 'udp_bind = "[::1]:7000"\npublic_ip = "::1"\ngso = true\n'),
]:
    put("config", name, text.encode())
