"""Downloads against real HTTP servers on 127.0.0.1 that serve, corrupt or stall."""

from __future__ import annotations

import functools
import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_vae import data


class _Handler(http.server.SimpleHTTPRequestHandler):
    mode = "ok"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.mode == "ok":
            return super().do_GET()
        path = Path(self.translate_path(self.path))
        body = path.read_bytes() if path.is_file() else b""
        if self.mode == "corrupt":
            body = gzip.compress(b"not the MNIST you are looking for")
        if self.mode == "slow":
            time.sleep(2)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "truncated" announces the full length but sends half, then closes
        self.wfile.write(body[: len(body) // 2] if self.mode == "truncated" else body)


@pytest.fixture
def serve(tiny_mnist, tmp_path) -> Iterator:
    servers = []

    def start(mode: str = "ok") -> str:
        handler = type(f"Handler_{mode}", (_Handler,), {"mode": mode})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path / "mirror"))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_from_a_mirror(serve, tiny_mnist, tmp_path):
    dest = tmp_path / "out" / "mnist"
    data.download_mnist(dest, [serve("ok")], timeout=5, progress=False)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == tiny_mnist
    assert _leftovers(dest.parent) == ["mnist"]  # no staging folder left behind


def test_local_folder_mirror(tiny_mnist, tmp_path):
    dest = tmp_path / "out" / "mnist"
    data.download_mnist(dest, [str(tmp_path / "mirror")], progress=False)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == tiny_mnist


@pytest.mark.parametrize("bad", ["corrupt", "truncated", "slow"])
def test_a_bad_mirror_falls_back_to_the_next(serve, tiny_mnist, tmp_path, capsys, bad):
    dest = tmp_path / "out" / "mnist"
    bad_url, good_url = serve(bad), serve("ok")
    data.download_mnist(dest, [bad_url, good_url], timeout=0.5, progress=False)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == tiny_mnist
    assert capsys.readouterr().out.count(f"from {good_url}") == 4


def test_all_sources_failing_gives_one_clear_error_and_no_output(serve, tiny_mnist, tmp_path):
    dest = tmp_path / "out" / "mnist"
    sources = [serve("corrupt"), str(tmp_path / "no-such-folder"), "http://127.0.0.1:9/"]
    with pytest.raises(data.DownloadError) as info:
        data.download_mnist(dest, sources, timeout=2, progress=False)
    message = str(info.value)
    for source in sources:
        assert source in message
    assert "sha256" in message and data.MIRROR_ENV in message
    assert _leftovers(dest.parent) == []


def test_a_failed_download_keeps_the_previous_good_copy(tiny_mnist, tmp_path):
    dest = tmp_path / "out" / "mnist"
    data.download_mnist(dest, [str(tmp_path / "mirror")], progress=False)
    with pytest.raises(data.DownloadError):
        data.download_mnist(dest, [str(tmp_path / "nowhere")], progress=False)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == tiny_mnist
    assert _leftovers(dest.parent) == ["mnist"]
