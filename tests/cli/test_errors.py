"""Errors and warnings on the command line: each said once, on one line, with the usage the user typed.

The logging and Hub tests run the command in a real process: open_clip installs a root
logging handler that would leak between in-process tests, and the Hub tests need the
environment huggingface_hub reads when it is imported.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from image2prompt.cli.main import cli

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_cli(*args: object, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # the timeout only keeps a hung run from hanging the suite; nothing asserts on time
    return subprocess.run([sys.executable, "-m", "image2prompt", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def image(image_folder: Path) -> Path:
    return image_folder / "a.png"


# --- each warning prints once ------------------------------------------------------------


def test_each_warning_prints_once_after_open_clip_is_loaded(tmp_path: Path, image: Path, tiny_open_clip: Path,
                                                            small_vocab_dir: Path) -> None:
    # A corrupt embedding cache is warned about after open_clip has loaded the model (and
    # installed its root handler); an empty --vocab list is warned about before.
    cache = tmp_path / "emb"
    args = ["--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption", "x",
            "--vocab", small_vocab_dir, "--device", "cpu", "--cache-dir", cache, "--mode", "fast"]
    first = invoke(image, *args)
    assert first.exit_code == 0, first.output
    files = sorted(cache.glob("*.safetensors"))
    assert files
    for f in files:
        f.write_bytes(b"not a safetensors file")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")

    proc = run_cli(image, *args, "--vocab", empty, env=dict(os.environ), cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    warnings = [line for line in lines if "warning" in line.lower()]
    assert any("is empty" in w for w in warnings), proc.stderr
    stale = [w for w in warnings if "corrupt" in w]
    assert len(stale) == len(files), proc.stderr  # one per corrupt file, not two
    assert len(warnings) == len(set(warnings)), proc.stderr
    assert all(w.startswith("image2prompt: warning: ") for w in warnings), proc.stderr


# --- an unreachable Hub is one line ---------------------------------------------------------


@pytest.fixture
def unreachable_hub_env(tmp_path: Path) -> dict[str, str]:
    """The Hub at a closed loopback port, HF_HUB_OFFLINE unset, every cache empty in tmp."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                        "TRANSFORMERS_CACHE", "HF_ENDPOINT", *PROXY_VARS)}
    env.update(HOME=str(home), HF_HOME=str(home / "hf"), XDG_CACHE_HOME=str(home / ".cache"),
               IMAGE2PROMPT_CACHE_DIR=str(home / "i2p"), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


def assert_one_line_hub_error(proc: subprocess.CompletedProcess[str], flag: str) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("image2prompt: error: ")
    assert "HF_HUB_OFFLINE=1" in line and f"{flag} local-dir:" in line
    assert "Traceback" not in proc.stderr
    assert ".." not in line and ". ." not in line
    return line


def test_unreachable_hub_open_clip_is_one_line(tmp_path: Path, image: Path,
                                               unreachable_hub_env: dict[str, str]) -> None:
    proc = run_cli(image, "--clip", "ViT-B-32/openai", "--caption-model", "none", "--caption", "x",
                   "--device", "cpu", env=unreachable_hub_env, cwd=tmp_path)
    line = assert_one_line_hub_error(proc, "--clip")
    assert "ViT-B-32/openai" in line and "cannot be reached" in line


def test_unreachable_hub_captioner_is_one_line(tmp_path: Path, image: Path, tiny_open_clip: Path,
                                               unreachable_hub_env: dict[str, str]) -> None:
    proc = run_cli(image, "--caption-model", "blip-base", "--clip", f"local-dir:{tiny_open_clip}",
                   "--device", "cpu", env=unreachable_hub_env, cwd=tmp_path)
    line = assert_one_line_hub_error(proc, "--caption-model")
    assert "blip-base" in line and "--caption-model none --caption TEXT" in line


# --- --device ------------------------------------------------------------------------------


def test_bad_device_names_only_the_valid_choices(image: Path, tiny_open_clip: Path) -> None:
    result = invoke(image, "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none",
                    "--caption", "x", "--device", "banana")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "banana" in lines[0] and "auto, cpu, cuda, cuda:N or mps" in lines[0]
    for other in ("xla", "hpu", "mkldnn", "privateuseone"):
        assert other not in lines[0]


# --- usage errors name the command only when it was typed ---------------------------------------


def test_usage_error_without_a_command_shows_the_usage_typed(image: Path) -> None:
    result = invoke(image, "--mode", "nope")
    assert result.exit_code == 2
    assert "Usage: image2prompt [OPTIONS] PATH_OR_URL..." in result.stderr
    assert "Try 'image2prompt -h' for help." in result.stderr
    assert "image2prompt run" not in result.stderr
    assert "Invalid value for '--mode'" in result.stderr


def test_usage_error_raised_by_the_default_command_shows_the_usage_typed(image: Path) -> None:
    result = invoke(image, "--caption-model", "none")
    assert result.exit_code == 2
    assert "Usage: image2prompt [OPTIONS] PATH_OR_URL..." in result.stderr
    assert "image2prompt run" not in result.stderr
    assert "Error: best mode needs a caption, and none was given or generated" in result.stderr
    assert "(or use negative or style mode)" in result.stderr


def test_usage_error_after_run_keeps_run(image: Path) -> None:
    result = invoke("run", image, "--mode", "nope")
    assert result.exit_code == 2
    assert "Usage: image2prompt run [OPTIONS] PATH_OR_URL..." in result.stderr
    assert "Try 'image2prompt run " in result.stderr
    assert "Invalid value for '--mode'" in result.stderr
