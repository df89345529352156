"""A Hugging Face Hub on 127.0.0.1, so the libraries' own hub errors arise without a network.

It either answers every request with one of the hub's errors (the ``X-Error-Code`` header the real
hub sends, which ``huggingface_hub`` turns into ``GatedRepoError``, ``RepositoryNotFoundError``...),
or serves one local folder as every repository at :data:`COMMIT`, answering "no such file" (with
the commit, as the hub does) for what the folder lacks.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ERRORS = {
    "GatedRepo": 403,
    "RepoNotFound": 404,
    "RevisionNotFound": 404,
    "EntryNotFound": 404,
}
"""The hub's error codes and the HTTP status it sends them with."""


class FakeHub:
    """Start with ``with FakeHub(...) as hub:``; ``hub.endpoint`` is its ``HF_ENDPOINT``.

    Args:
        error: Answer every request with this error code (a key of :data:`ERRORS`).
        folder: Serve this folder's files as every model repository.
    """

    def __init__(self, error: str | None = None, folder: Path | None = None):
        self.error, self.folder = error, folder
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for a request path."""
        self.requests.append(path)
        if self.error is not None:
            return ERRORS[self.error], {"X-Error-Code": self.error, "X-Repo-Commit": COMMIT}, b""
        parts = [unquote(p) for p in urlsplit(path).path.strip("/").split("/")]
        files = sorted(p.name for p in self.folder.iterdir() if p.is_file()) if self.folder else []
        if parts[:2] == ["api", "models"] and "tree" in parts:
            return 200, {"Content-Type": "application/json"}, b"[]"  # no extra chat templates
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            info = {"id": "/".join(parts[2:4]), "sha": COMMIT,
                    "siblings": [{"rfilename": f} for f in files]}  # fmt: skip
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        if len(parts) >= 5 and parts[2] == "resolve":
            name = "/".join(parts[4:])
            if name not in files:
                return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b""
            body = (self.folder / name).read_bytes()
            etag = hashlib.sha256(body).hexdigest()
            return 200, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}, body
        return 404, {}, b""


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, with_body: bool) -> None:
            status, headers, body = hub.answer(self.path)
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (the http.server interface)
            self._reply(with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(with_body=False)

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    return Handler
