"""Image faults: each is a recorded refusal, never a crash and never a read outside the data root."""

import http.server
import io
import threading
from pathlib import Path

import pytest
from PIL import Image

from caslie.images import ImageError, ImageLimits, load_image

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "data" / "sample"
FAST = ImageLimits(timeout_s=1.0, retries=1, size=500)


def _png(size=(64, 48), color=(200, 30, 30), fmt="PNG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local HTTP server over a folder (no network leaves the machine)."""
    folder = tmp_path_factory.mktemp("www")
    (folder / "ok.png").write_bytes(_png((900, 600)))
    (folder / "big.png").write_bytes(_png((64, 64)) + b"\0" * 5000)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_local_image_loads_and_fits_the_paper_size(tmp_path):
    (tmp_path / "wide.png").write_bytes(_png((1200, 600)))
    img = load_image("wide.png", tmp_path, FAST)
    assert img.mode == "RGB" and img.size == (500, 250)
    assert load_image("images/t08.png", ROOT, FAST).mode == "RGB"


def test_url_image_is_fetched(server):
    assert load_image(f"{server}/ok.png", ROOT, FAST).size == (500, 333)


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
        load_image("http://127.0.0.1:9/x.png", ROOT, FAST)


def test_http_errors_and_byte_limit(server):
    with pytest.raises(ImageError, match="HTTP 404"):
        load_image(f"{server}/nope.png", ROOT, FAST)
    with pytest.raises(ImageError, match="larger than 1000 bytes"):
        load_image(f"{server}/big.png", ROOT, ImageLimits(max_bytes=1000))


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
