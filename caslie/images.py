"""Product images from local paths or http(s) URLs, with the limits a shared cluster needs.

Local paths are confined to the data root (no ``..``, no absolute path or link that leaves it).
URLs must be ``http`` or ``https``; their host is resolved once and refused when any address is
loopback, private, link-local, multicast, reserved or unspecified (server-side request forgery from
a cluster node), unless ``allow_private`` is set. The connection goes to the address that was
checked (a second lookup could answer differently), redirects are followed here so each hop is
checked the same way, and each attempt has a total deadline and a byte limit. An image is decoded
only when its declared size is under the pixel limit (decompression bombs are refused before any
pixel is decoded), then resized to fit the configured square. Every refusal is an
:class:`ImageError` whose message is recorded as the failure reason.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_REDIRECTS = 5
"""Hops followed per fetch; image hosts and CDNs need one or two."""
REDIRECT_CODES = (301, 302, 303, 307, 308)
CHUNK_BYTES = 64 * 1024
"""Body read size: small enough that the deadline is checked often on a slow server."""
PRIVATE_HINT = "(set data.allow_private_urls: true for an intranet image host)"
# Checked in this order, so an address that is both (169.254.x is also "private") gets the
# precise name.
ADDRESS_KINDS = ("unspecified", "loopback", "link-local", "multicast", "reserved", "private")


class ImageError(Exception):
    """An image that cannot be had; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    """How images are fetched and sized."""

    timeout_s: float = 10.0
    """Total seconds per fetch attempt: connect, redirects, headers and body together."""
    retries: int = 2
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    size: int = 500
    allow_private: bool = False
    """Fetch URLs that resolve to loopback, private, link-local... addresses (``data.allow_private_urls``)."""


class _StatusError(Exception):
    """A final HTTP status that is not 200."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def _read_local(ref: str, root: Path, limits: ImageLimits) -> bytes:
    if ref.startswith("file:") or "://" in ref:
        raise ImageError(f"unsupported URL scheme in '{ref}' (only http and https)")
    root = root.resolve()
    path = (root / ref).resolve()
    if not path.is_relative_to(root):
        raise ImageError(f"'{ref}' is outside the data root {root}")
    if not path.is_file():
        raise ImageError(f"image file '{ref}' not found under {root}")
    if path.stat().st_size > limits.max_bytes:
        raise ImageError(f"'{ref}' is larger than {limits.max_bytes} bytes")
    try:
        return path.read_bytes()
    except OSError as err:
        raise ImageError(f"cannot read '{ref}' under {root}: {err.strerror or err}") from None


def address_kind(address: str) -> str | None:
    """Why an IP address is not a public internet address, or ``None`` when it is one.

    Args:
        address: An IPv4 or IPv6 literal as ``getaddrinfo`` returns it (IPv4-mapped IPv6 such as
            ``::ffff:127.0.0.1`` is judged by its IPv4 address).

    Returns:
        ``"loopback"``, ``"private"``, ``"link-local"``, ``"multicast"``, ``"reserved"``,
        ``"unspecified"``, ``"non-public"`` (any other range that is not globally routed, e.g.
        100.64.0.0/10) or ``None``.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # Python 3.11 does not look inside the mapping itself
    for kind in ADDRESS_KINDS:
        if getattr(ip, "is_" + kind.replace("-", "_")):
            return kind
    return None if ip.is_global else "non-public"


def vet_url(url: str, limits: ImageLimits) -> list[str]:
    """The addresses an http(s) URL may be fetched from, checked before anything is sent.

    Raises:
        ImageError: not http/https, no host, or (unless ``limits.allow_private``) any resolved
            address is not public.
        OSError: the host name cannot be resolved (worth a retry).
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ImageError(f"unsupported URL scheme in '{url}' (only http and https)")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise ImageError(f"{url}: bad port") from None
    if not parts.hostname:
        raise ImageError(f"{url}: no host name")
    infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not limits.allow_private:
        for address in addresses:
            kind = address_kind(address)
            if kind is not None:
                raise ImageError(
                    f"{url} resolves to {address}, a {kind} address: refused {PRIVATE_HINT}"
                )
    return addresses


def _open(addresses: list[str], port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the first vetted address that answers (no name is looked up again)."""
    last: OSError = OSError("no address")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as err:
            last = err
    raise last


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # certificate and host name verification on


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to addresses checked beforehand; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses
        # http.client hands the socket to the response (and forgets it) on "Connection: close";
        # the deadline needs it until the body is read.
        self.held: socket.socket | None = None

    def connect(self) -> None:
        self.sock = self.held = _open(self.addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to a vetted address; SNI and certificate checks use the URL's host name."""

    default_port = http.client.HTTPS_PORT

    def connect(self) -> None:
        super().connect()
        self.sock = self.held = _tls_context().wrap_socket(self.sock, server_hostname=self.host)


def _cut(conn: _PinnedHTTPConnection) -> None:
    if conn.held is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to cut
            socket.socket.shutdown(conn.held, socket.SHUT_RDWR)


@contextlib.contextmanager
def _deadline(conn: _PinnedHTTPConnection, deadline: float) -> Iterator[None]:
    """Cut the connection when the attempt's time is up.

    A socket timeout bounds one read only: a server sending a byte at a time, in its TLS
    handshake, its headers or its body, would otherwise hold a worker for as long as it likes.
    """
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (conn,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _read_body(resp: http.client.HTTPResponse, conn: _PinnedHTTPConnection, url: str,
               limits: ImageLimits, deadline: float) -> bytes:  # fmt: skip
    declared = resp.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise ImageError(f"{url} is larger than {limits.max_bytes} bytes")
    chunks, size = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        if conn.held is not None:
            conn.held.settimeout(remaining)
        chunk = resp.read1(CHUNK_BYTES)
        if not chunk:
            # read1 reports a connection closed early (or cut at the deadline) as a short body
            if declared.isdigit() and size < int(declared):
                raise http.client.IncompleteRead(b"".join(chunks), int(declared) - size)
            return b"".join(chunks)
        size += len(chunk)
        if size > limits.max_bytes:
            raise ImageError(f"{url} is larger than {limits.max_bytes} bytes")
        chunks.append(chunk)


def _get(url: str, limits: ImageLimits, deadline: float) -> tuple[bytes | None, str | None]:
    """One request: ``(body, None)`` on 200, ``(None, location)`` on a redirect."""
    addresses = vet_url(url, limits)
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    kind = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    conn = kind(parts.hostname, port, addresses, remaining)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        with _deadline(conn, deadline):
            conn.request("GET", target, headers={"User-Agent": "caslie"})
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if resp.status in REDIRECT_CODES and location:
                return None, urljoin(url, location)
            if resp.status != 200:
                raise _StatusError(resp.status)
            return _read_body(resp, conn, url, limits, deadline), None
    except (OSError, http.client.HTTPException):
        if time.monotonic() >= deadline:  # cut by the deadline, whatever error the cut caused
            raise TimeoutError(f"no complete response within {limits.timeout_s:g} s") from None
        raise
    finally:
        conn.close()
        if conn.held is not None:
            conn.held.close()


def _fetch_once(url: str, limits: ImageLimits) -> bytes:
    """One attempt: follow up to :data:`MAX_REDIRECTS` hops, each checked, within one deadline."""
    deadline = time.monotonic() + limits.timeout_s
    hop = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            body, location = _get(hop, limits, deadline)
        except ImageError as err:
            if hop == url:
                raise
            raise ImageError(f"{url} redirected: {err}") from None
        if body is not None:
            return body
        hop = location
    raise ImageError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _fetch(url: str, limits: ImageLimits) -> bytes:
    last = ""
    for attempt in range(limits.retries + 1):
        if attempt:
            time.sleep(min(2.0, 0.25 * 2**attempt))
        try:
            return _fetch_once(url, limits)
        except _StatusError as err:
            last = str(err)
            if 400 <= err.status < 500 and err.status != 429:  # the server will not change its mind
                break
        except (OSError, http.client.HTTPException) as err:
            last = str(err) or type(err).__name__
    raise ImageError(f"cannot fetch {url} after {attempt + 1} attempt(s): {last}")


def read_image_bytes(ref: str, root: Path, limits: ImageLimits) -> bytes:
    """The raw bytes of an image reference (URL or path under ``root``)."""
    scheme = urlsplit(ref).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch(ref, limits)
    return _read_local(ref, root, limits)


def decode_image(data: bytes, limits: ImageLimits, ref: str = "image"):
    """Decode bytes into an RGB ``PIL.Image`` that fits ``limits.size`` x ``limits.size``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # the pixel limit below decides, not PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            if img.format not in FORMATS:
                raise ImageError(f"{ref}: unsupported image format {img.format}")
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageError(
                    f"{ref}: {width}x{height} pixels exceeds the limit of {limits.max_pixels}"
                )
            img.load()
            rgb = img.convert("RGB")
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageError(f"{ref}: not a readable image ({type(err).__name__})") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{ref}: corrupt image data ({err})") from None
    return ImageOps.contain(rgb, (limits.size, limits.size))


def load_image(ref: str, root: Path, limits: ImageLimits):
    """Fetch or read, check and decode one image.

    Raises:
        ImageError: unreachable, outside the data root, too large, corrupt or unsupported.
    """
    return decode_image(read_image_bytes(ref, root, limits), limits, ref)
