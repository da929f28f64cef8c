"""The SSRF-safe downloader (image2prompt.io.download): public addresses only, http(s) only, bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import image2prompt.io.download as download_mod
from image2prompt.errors import ImageLoadError
from tests.support.http import QuietHandler, serve_folder


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.0.0.7", False),
    ("192.168.1.1", False), ("172.16.0.1", False), ("169.254.169.254", False), ("::1", False),
    ("::ffff:127.0.0.1", False), ("fd00::1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("nonsense", False),
    ("64:ff9b::a00:1", False), ("64:ff9b::808:808", True), ("2002:a00:1::", False), ("::127.0.0.1", False)])
def test_public_addresses(address: str, public: bool):
    assert download_mod.is_public_address(address) is public


def test_public_only_downloads_refuse_loopback_and_other_schemes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with serve_folder(tmp_path, monkeypatch) as base:
        url = f"{base}/a.png"
        assert download_mod.download_bytes(url, 5)[:4] == b"\x89PNG"  # the CLI's downloads may use loopback
        with pytest.raises(ImageLoadError, match="refused: 127.0.0.1 is not a public address") as e:
            download_mod.download_bytes(url, 5, public_only=True)
        assert e.value.kind == "refused" and e.value.source == url
        local = url.replace("127.0.0.1", "localhost")
        with pytest.raises(ImageLoadError, match="refused: localhost"):
            download_mod.download_bytes(local, 5, public_only=True)
    with pytest.raises(ImageLoadError, match="only http and https"):
        download_mod.download_bytes("file:///etc/passwd", 5, public_only=True)


class RedirectHandler(QuietHandler):
    def do_GET(self) -> None:
        if self.path == "/a.png":
            return super().do_GET()
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                import time

                time.sleep(0.05)
            return
        self.send_response(302)
        self.send_header("Location", "ftp://127.0.0.1:21/" if self.path == "/ftp" else "/a.png")
        self.end_headers()


def test_public_only_refuses_redirects_off_http_and_bounds_the_whole_download(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    monkeypatch.setattr(download_mod, "is_public_address", lambda address: True)  # let loopback stand in for the web
    with serve_folder(tmp_path, monkeypatch, RedirectHandler) as base:
        assert download_mod.download_bytes(f"{base}/elsewhere", 5, public_only=True)[:4] == b"\x89PNG"
        with pytest.raises(ImageLoadError, match="refused: a redirect to a URL that is not http or https"):
            download_mod.download_bytes(f"{base}/ftp", 5, public_only=True)
        with pytest.raises(ImageLoadError, match="not finished within 1 s"):
            download_mod.download_bytes(f"{base}/slow", 1, public_only=True)
        with pytest.raises(ImageLoadError, match="larger than the 10-byte limit") as e:
            download_mod.download_bytes(f"{base}/a.png", 5, public_only=True, max_bytes=10)
        assert e.value.kind == "too_large"
