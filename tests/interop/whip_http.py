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


def http(method, url, token=None, body=None, content_type=None):
    """Blocking HTTP request; returns (status, headers, body text), raises HttpRefused on
    an HTTP error status and OSError when the server cannot be reached."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        raise HttpRefused(e.code, e.read().decode("utf-8", "replace")) from None


def post_offer(url, offer, token=None):
    """POST `offer` to a WHIP/WHEP endpoint; returns (answer SDP, absolute resource URL)."""
    status, headers, answer = http(
        "POST", url, token=token, body=offer.encode(), content_type="application/sdp"
    )
    if status != 201:
        raise HttpRefused(status, answer)
    location = headers.get("Location")
    if not location:
        raise HttpRefused(status, "201 without a Location header")
    return answer, urllib.parse.urljoin(url, location)


def delete_resource(resource, token=None):
    """End the session; a failure is logged, never raised (the client is exiting)."""
    try:
        status, _, _ = http("DELETE", resource, token=token)
        logging.debug("DELETE %s: %s", resource, status)
    except (HttpRefused, OSError) as e:
        logging.warning("DELETE %s failed: %s", resource, e)
