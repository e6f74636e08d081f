"""The WHIP/WHEP HTTP side shared by the interop clients (aiortc_client.py and
gst_client.py): stdlib only, so it runs under any python3 either client needs.

POST an SDP offer, get the answer and the session resource (RFC 9725 Location), DELETE it
at the end; JSON event lines on stdout for the Rust tests.
"""

import json
import logging
import urllib.error
import urllib.parse
import urllib.request


def emit(**fields):
    print(json.dumps(fields, separators=(",", ":")), flush=True)


class HttpRefused(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def http(method, url, token=None, body=None, content_type=None, headers=None):
    """Blocking HTTP request; returns (status, headers, body text), raises HttpRefused on
    an HTTP error status and OSError when the server cannot be reached."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        raise HttpRefused(e.code, e.read().decode("utf-8", "replace")) from None


def post_offer(url, offer, token=None):
    """POST `offer` to a WHIP/WHEP endpoint; returns (answer SDP, absolute resource URL)."""
    answer, resource, _ = post_offer_etag(url, offer, token=token)
    return answer, resource


def post_offer_etag(url, offer, token=None):
    """post_offer, plus the resource's ETag (None if the server sent none)."""
    status, headers, answer = http(
        "POST", url, token=token, body=offer.encode(), content_type="application/sdp"
    )
    if status != 201:
        raise HttpRefused(status, answer)
    location = headers.get("Location")
    if not location:
        raise HttpRefused(status, "201 without a Location header")
    return answer, urllib.parse.urljoin(url, location), headers.get("ETag")


SDPFRAG = "application/trickle-ice-sdpfrag"


def trickle_fragment(local_sdp):
    """An RFC 8840 trickle fragment as RFC 9725 4.3.1 shows it, from a client's local
    description: its current ICE credentials, the first m-line and mid, its first
    candidate and end-of-candidates. None if the description has no candidate."""
    lines = [l.rstrip("\r") for l in local_sdp.split("\n")]

    def first(prefix):
        return next((l for l in lines if l.startswith(prefix)), None)

    candidate = first("a=candidate:")
    if candidate is None:
        return None
    parts = [first("a=ice-ufrag:"), first("a=ice-pwd:"), first("m="), first("a=mid:")]
    parts += [candidate, "a=end-of-candidates"]
    return "".join(p + "\r\n" for p in parts if p)


def patch_fragment(resource, fragment, etag=None, token=None):
    """PATCH an SDP fragment to a session resource with If-Match (the ETag, else "*");
    returns (status, ETag). Raises HttpRefused on an HTTP error status."""
    status, headers, _ = http(
        "PATCH",
        resource,
        token=token,
        body=fragment.encode(),
        content_type=SDPFRAG,
        headers={"If-Match": etag or "*"},
    )
    return status, headers.get("ETag")


def trickle(resource, local_sdp, etag=None, token=None):
    """Send one trickle PATCH and report it as a `trickle` event (never raises)."""
    fragment = trickle_fragment(local_sdp)
    if fragment is None:
        emit(event="trickle", status=None, body="no candidate to trickle")
        return
    try:
        status, new_etag = patch_fragment(resource, fragment, etag=etag, token=token)
        emit(event="trickle", status=status, etag=new_etag, sent_etag=etag)
    except HttpRefused as e:
        emit(event="trickle", status=e.status, body=e.body, sent_etag=etag)
    except OSError as e:
        emit(event="trickle", status=None, body=str(e), sent_etag=etag)


def delete_resource(resource, token=None):
    """End the session; a failure is logged, never raised (the client is exiting)."""
    try:
        status, _, _ = http("DELETE", resource, token=token)
        logging.debug("DELETE %s: %s", resource, status)
    except (HttpRefused, OSError) as e:
        logging.warning("DELETE %s failed: %s", resource, e)
