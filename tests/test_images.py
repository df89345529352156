"""Image faults: each is a recorded refusal, never a crash and never a read outside the data root."""

import contextlib
import http.server
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from caslie import images
from caslie.images import ImageError, ImageLimits, address_kind, load_image, vet_url

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "data" / "sample"
FAST = ImageLimits(timeout_s=1.0, retries=1, size=500)
LOCAL = ImageLimits(timeout_s=1.0, retries=1, size=500, allow_private=True)  # the test server


def _png(size=(64, 48), color=(200, 30, 30), fmt="PNG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buf, format=fmt)
    return buf.getvalue()


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files from a folder, plus redirects and servers that drip their reply a byte at a time."""

    protocol_version = "HTTP/1.1"  # a kept-alive connection: the client must stop on its own
    seen: list[str] = []  # every path requested, so a test can show nothing reached the server

    def log_message(self, *args):  # keep test output quiet
        pass

    def handle(self):
        with contextlib.suppress(ConnectionError):  # a client may hang up a kept-alive connection
            super().handle()

    def do_GET(self):
        self.seen.append(self.path)
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect?to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/short":  # declares 100 bytes, sends 10 and hangs up
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"\x89PNG\r\n\x1a\n..")
            self.close_connection = True
        elif self.path in ("/drip-body", "/drip-headers"):
            self._drip(self.path == "/drip-headers")
        else:
            super().do_GET()

    def _drip(self, in_headers: bool):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\nX-Slow: " + b"x" * 30 + b"\r\n\r\n"
        body = b"y" * 30
        fast, slow = (b"", head + body) if in_headers else (head, body)
        try:
            self.wfile.write(fast)
            self.wfile.flush()
            for i in range(len(slow)):  # one byte per 0.3 s: 9 s in all unless cut off
                self.wfile.write(slow[i : i + 1])
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:  # the client hung up, as it should
            pass


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """The files the test servers serve."""
    folder = tmp_path_factory.mktemp("www")
    (folder / "ok.png").write_bytes(_png((900, 600)))
    (folder / "big.png").write_bytes(_png((64, 64)) + b"\0" * 5000)
    return folder


@pytest.fixture(scope="module")
def server(www):
    """A local HTTP server over a folder (no network leaves the machine)."""
    folder = www
    handler = lambda *a, **k: Handler(*a, directory=str(folder), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, www):
    """The same files over HTTPS, with a self-signed certificate for ``cdn.example.test``."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=cdn.example.test", "-addext", "subjectAltName=DNS:cdn.example.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    handler = lambda *a, **k: Handler(*a, directory=str(www), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], cert
    httpd.shutdown()


@pytest.fixture
def resolver(monkeypatch):
    """Fake host names for the OS resolver, and a record of every TCP connect attempted.

    ``names`` maps a fake host to the addresses it "resolves" to; ``route`` sends a connection
    for one of them to the local server instead (so a "public" host sends no traffic anywhere).
    """
    names: dict[str, list[str]] = {}
    route: dict[str, tuple[str, int]] = {}
    connects: list[tuple[str, int]] = []
    real_resolve, real_connect = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in names:
            return real_resolve(host, port, *args, **kwargs)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in names[host]]  # fmt: skip

    def create_connection(address, *args, **kwargs):
        connects.append(address)
        return real_connect(route.get(address[0], address), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return names, route, connects


def test_local_image_loads_and_fits_the_paper_size(tmp_path):
    (tmp_path / "wide.png").write_bytes(_png((1200, 600)))
    img = load_image("wide.png", tmp_path, FAST)
    assert img.mode == "RGB" and img.size == (500, 250)
    assert load_image("images/t08.png", ROOT, FAST).mode == "RGB"


def test_url_image_is_fetched(server):
    assert load_image(f"{server}/ok.png", ROOT, LOCAL).size == (500, 333)


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("../rows.jsonl", "outside the data root"),
        ("../../pyproject.toml", "outside the data root"),
        ("/etc/passwd", "outside the data root"),
        ("file:///etc/passwd", "unsupported URL scheme"),
        ("ftp://example.com/a.png", "unsupported URL scheme"),
        ("images/missing.png", "not found"),
    ],
)
def test_refused_references(ref, reason):
    with pytest.raises(ImageError, match=reason):
        load_image(ref, ROOT, FAST)


def test_symlink_leaving_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(_png())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ImageError, match="outside the data root"):
        load_image("link.png", root, FAST)


def test_unreachable_url_is_a_failure_not_a_hang():
    with pytest.raises(ImageError, match=r"cannot fetch http://127.0.0.1:9/x.png after 2 attempt"):
        load_image("http://127.0.0.1:9/x.png", ROOT, LOCAL)


def test_http_errors_and_byte_limit(server):
    with pytest.raises(ImageError, match="HTTP 404"):
        load_image(f"{server}/nope.png", ROOT, LOCAL)
    with pytest.raises(ImageError, match="larger than 1000 bytes"):
        load_image(f"{server}/big.png", ROOT, ImageLimits(max_bytes=1000, allow_private=True))


def test_corrupt_bytes(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    for name in ("bad.png", "text.png"):
        with pytest.raises(ImageError, match="not a readable image|corrupt image data"):
            load_image(name, tmp_path, FAST)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png((12000, 12000), mode="1"))  # 144 Mpx in a few KB
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(ImageError, match="12000x12000 pixels exceeds the limit"):
        load_image("bomb.png", tmp_path, FAST)


def test_unsupported_format(tmp_path):
    (tmp_path / "scan.tif").write_bytes(_png(fmt="TIFF"))
    with pytest.raises(ImageError, match="unsupported image format TIFF"):
        load_image("scan.tif", tmp_path, FAST)


def _port(server: str) -> int:
    return int(server.rsplit(":", 1)[1])


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0x7f000001", "2130706433", "127.1"])
def test_loopback_urls_are_refused_by_default_before_any_request(server, host):
    # glibc's resolver reads the hex and decimal forms as 127.0.0.1, as inet_aton does
    url = f"http://{host}:{_port(server)}/ok.png"
    Handler.seen.clear()
    with pytest.raises(ImageError) as err:
        load_image(url, ROOT, FAST)
    assert str(err.value) == (
        f"{url} resolves to 127.0.0.1, a loopback address: refused "
        "(set data.allow_private_urls: true for an intranet image host)"
    )
    assert Handler.seen == []
    assert load_image(url, ROOT, LOCAL).size == (500, 333)  # the same URL, allowed on request


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.20", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("::1", "loopback"),
        ("fc00::1", "private"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_kinds(address, kind):
    assert address_kind(address) == kind


@pytest.mark.parametrize(
    ("addresses", "refused"),
    [
        (["10.0.0.1"], "10.0.0.1, a private"),
        (["93.184.216.34", "192.168.0.7"], "192.168.0.7, a private"),  # any address counts
        (["169.254.169.254"], "169.254.169.254, a link-local"),
        (["224.0.0.251"], "224.0.0.251, a multicast"),
        (["::1"], "::1, a loopback"),
        (["fc00::5"], "fc00::5, a private"),
    ],
)
def test_private_names_are_refused_before_any_connect(resolver, addresses, refused):
    names, _, connects = resolver
    names["images.example.test"] = addresses
    url = "https://images.example.test/a.png"
    with pytest.raises(ImageError, match=f"{url} resolves to {refused} address: refused"):
        load_image(url, ROOT, FAST)
    assert connects == []
    assert vet_url(url, ImageLimits(allow_private=True)) == addresses


def test_connect_goes_to_the_checked_address_and_each_redirect_is_checked(server, resolver):
    names, route, connects = resolver
    names["cdn.example.test"] = ["93.184.216.34"]  # "public": its connection lands on the server
    route["93.184.216.34"] = ("127.0.0.1", _port(server))
    public = f"http://cdn.example.test:{_port(server)}"
    assert load_image(f"{public}/ok.png", ROOT, FAST).size == (500, 333)
    assert connects == [("93.184.216.34", _port(server))]  # the vetted address, not a new lookup
    connects.clear()
    with pytest.raises(ImageError, match=r"redirected: http://127.0.0.1:\d+/ok.png resolves to "
                       r"127.0.0.1, a loopback address: refused"):  # fmt: skip
        load_image(f"{public}/redirect?to={server}/ok.png", ROOT, FAST)
    assert len(connects) == 1  # the public hop only
    with pytest.raises(
        ImageError, match="redirected: unsupported URL scheme in 'file:///etc/passwd'"
    ):
        load_image(f"{public}/redirect?to=file:///etc/passwd", ROOT, FAST)


def test_redirects_are_followed_relative_and_limited(server):
    assert load_image(f"{server}/redirect?to=/ok.png", ROOT, LOCAL).size == (500, 333)
    loop = f"{server}/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/ok.png"
    with pytest.raises(ImageError, match="more than 5 redirects"):
        load_image(loop, ROOT, LOCAL)


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_dripping_server_is_cut_off_at_the_total_deadline(server, path):
    start = time.monotonic()
    with pytest.raises(ImageError, match="after 1 attempt.*no complete response within 1 s"):
        load_image(server + path, ROOT, ImageLimits(timeout_s=1.0, retries=0, allow_private=True))
    assert time.monotonic() - start < 3  # the drip takes 9 s; a per-read timeout never fires


def test_a_body_cut_short_is_a_failure(server):
    with pytest.raises(ImageError, match="IncompleteRead"):
        load_image(f"{server}/short", ROOT, ImageLimits(retries=0, allow_private=True))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_checks_the_certificate_against_the_url_host(tls_server, resolver, monkeypatch):
    port, cert = tls_server
    names, route, connects = resolver
    names["cdn.example.test"] = ["93.184.216.34"]
    route["93.184.216.34"] = ("127.0.0.1", port)
    url = f"https://cdn.example.test:{port}/ok.png"
    with pytest.raises(ImageError, match="CERTIFICATE_VERIFY_FAILED"):  # self-signed: not trusted
        load_image(url, ROOT, FAST)
    images._tls_context.cache_clear()  # trust the test certificate from here on
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    try:
        assert load_image(url, ROOT, FAST).size == (500, 333)  # SNI and Host name the URL's host
        assert set(connects) == {("93.184.216.34", port)}
        with pytest.raises(ImageError, match="CERTIFICATE_VERIFY_FAILED.*mismatch"):
            load_image(
                f"https://127.0.0.1:{port}/ok.png", ROOT, LOCAL
            )  # not the certificate's name
    finally:
        images._tls_context.cache_clear()
