"""`image2prompt serve` as a user runs it: a real process on loopback, answering like the CLI."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from image2prompt.cli.main import cli
from tests.conftest import make_images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[str], base: str, limit: float = 180) -> None:
    """Until the server process answers /readyz with 200 (``limit`` seconds: a hang guard)."""
    deadline = time.monotonic() + limit
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.1)


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        e.pop(var, None)
    return e


def test_non_loopback_needs_a_key():
    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--api-key" in r.output and "--insecure-no-auth" in r.output
    r = CliRunner().invoke(cli, ["serve", "--caption", "a cat"])
    assert r.exit_code == 2 and "per request" in r.output
    assert "/interrogator/prompt" in CliRunner().invoke(cli, ["serve", "--help"]).output


def test_serve_answers_an_a1111_client_like_the_cli(tiny_open_clip: Path, tiny_blip: Path, small_vocab_dir: Path,
                                                    tmp_path: Path):
    image = tmp_path / "photo.png"
    make_images(2)[1].save(image)
    models = ["--clip", f"local-dir:{tiny_open_clip}", "--caption-model", f"local-dir:{tiny_blip}",
              "--vocab", str(small_vocab_dir)]
    e = env() | {"IMAGE2PROMPT_CACHE_DIR": str(tmp_path / "cache")}
    # the A1111 routes give the reference's prompts: the CLI's with the relevance floor off
    cli_prompt = subprocess.run([sys.executable, "-m", "image2prompt", str(image), "--mode", "fast", "--floor", "off",
                                 "-q", *models],
                                capture_output=True, text=True, env=e, timeout=300, check=True).stdout.strip()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "image2prompt", "serve", "--port", str(port), *models],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        body = {"image": "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode(),
                "clip_model_name": f"local-dir:{tiny_open_clip}", "mode": "fast"}
        r = httpx.post(base + "/interrogator/prompt", json=body, timeout=120)
        assert r.status_code == 200 and r.json() == {"prompt": cli_prompt}
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"serving http://127.0.0.1:{port}/" in err
    assert "POST /interrogator/prompt 200" in err and "Traceback" not in err


def test_a_failed_load_exits_1_in_one_line(tmp_path: Path):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "image2prompt", "serve", "--port", str(port), "--clip",
                           f"local-dir:{tmp_path / 'missing'}", "--caption-model", "none"],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("image2prompt: error: the models failed to load:") and "missing" in last


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_hosts_need_no_key(host: str):
    from image2prompt.cli.serve import is_loopback

    assert is_loopback(host) and not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_without_the_serve_extra_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed: importing it raises ImportError
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 1
    assert "serve needs the serve extra (uvicorn is missing): pip install 'image2prompt[serve]'" in r.output


def test_serve_captions_with_a_vlm_and_shows_its_question(tiny_open_clip: Path, tiny_llava: Path,
                                                          small_vocab_dir: Path, tmp_path: Path):
    """A tiny VLM through local-dir: in `serve`, with --caption-type: the caption is the VLM's, and
    /v1/models shows what it is asked."""
    image = tmp_path / "photo.png"
    make_images(2)[1].save(image)
    port = free_port()
    e = env() | {"IMAGE2PROMPT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "image2prompt", "serve", "--port", str(port), "--clip",
                             f"local-dir:{tiny_open_clip}", "--caption-model", f"local-dir:{tiny_llava}",
                             "--caption-type", "booru", "--caption-max-tokens", "6", "--vocab", str(small_vocab_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        models = httpx.get(base + "/v1/models", timeout=30).json()
        assert models["caption_model"] == "local-dir:tiny-llava"
        assert models["caption_prompt"].startswith("Write a list of Booru-style tags")
        with open(image, "rb") as f:
            r = httpx.post(base + "/v1/interrogate", files={"image": ("photo.png", f, "image/png")},
                           data={"mode": "fast"}, timeout=120)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["caption_model"] == "local-dir:tiny-llava" and result["prompt"]
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
