"""A mode registered by an installed plugin works from every front end: `run`, `batch`, `serve`
(native and A1111 routes) and the ComfyUI node.

The plugin is a real distribution, laid out as pip installs one (a module and its dist-info
with an ``image2prompt.plugins`` entry point), put on ``PYTHONPATH`` of the processes each
front end runs in, so its registration never leaks into this test process.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_images
from tests.server.test_serve_cli import env as clean_env
from tests.server.test_serve_cli import free_port, wait_ready
from tests.support.plugins import make_plugin_site

PLUGIN = '''
from image2prompt.modes import register_mode
from image2prompt.modes.fast import FastMode


@register_mode
class PlugFast(FastMode):
    """Fast mode under another name: its prompts must equal fast mode's."""

    name = "plugfast"
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_plugin_site(tmp_path_factory.mktemp("plugin-site"), "i2p_plugfast", PLUGIN, "plugfast")


@pytest.fixture(scope="module")
def setup(plugin_site: Path, tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("plugin-run")
    for i, im in enumerate(make_images(2)):
        im.save(work / f"{i}.png")
    models = ["--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption", "a thing",
              "--vocab", str(small_vocab_dir), "--device", "cpu"]
    e = clean_env() | {"IMAGE2PROMPT_CACHE_DIR": str(work / "cache"),
                       "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    return work, models, e


def cli(args: list[str], e: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "image2prompt", *args], capture_output=True, text=True, env=e,
                          timeout=300, check=check)


def test_run_and_batch_take_a_plugin_mode(setup) -> None:
    work, models, e = setup
    image = str(work / "0.png")
    fast = cli([image, "--mode", "fast", "-q", *models], e).stdout
    plug = cli([image, "--mode", "plugfast", "-q", *models], e)
    assert plug.stdout == fast and plug.stdout.strip(), plug.stderr
    assert "plugfast" in cli(["--help"], e).stdout
    without = cli([image, "--mode", "plugfast", "-q", *models], e | {"PYTHONPATH": ""}, check=False)
    assert without.returncode == 2 and "'plugfast' is not one of" in without.stderr  # the plugin is what adds it
    out = work / "plug.jsonl"
    done = cli(["batch", str(work), "-o", str(out), "--mode", "plugfast", "-q", *models], e)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert done.returncode == 0 and len(records) == 2 and all(r["ok"] for r in records)
    by_name = {Path(r["source"]).name: r["result"]["prompt"] for r in records}
    assert by_name["0.png"] == fast.strip()


def test_serve_and_comfyui_take_a_plugin_mode(setup, tiny_blip: Path) -> None:
    work, models, e = setup
    image = work / "1.png"
    fast = cli([str(image), "--mode", "fast", "-q", *models], e).stdout.strip()
    serve_models = [m for m in models if m not in ("--caption", "a thing")]  # the caption goes per request
    serve_models[serve_models.index("none")] = f"local-dir:{tiny_blip}"  # and the A1111 route captions
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "image2prompt", "serve", "--port", str(port), *serve_models],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        assert "plugfast" in httpx.get(base + "/v1/models").json()["modes"]
        data = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        native = httpx.post(base + "/v1/interrogate", json={"image": data, "mode": "plugfast", "caption": "a thing"},
                            timeout=120)
        assert native.status_code == 200, native.text
        assert native.json()["prompt"] == fast
        a1111 = httpx.post(base + "/interrogator/prompt", json={"image": data, "mode": "plugfast"}, timeout=120)
        assert a1111.status_code == 200 and a1111.json()["prompt"], a1111.text
        unknown = httpx.post(base + "/interrogator/prompt", json={"image": data, "mode": "nope"}, timeout=120)
        assert unknown.status_code == 422 and "plugfast" in unknown.json()["error"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    pack = Path(__file__).resolve().parent.parent / "integrations" / "comfyui"
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("i2p_comfy", {str(pack / "__init__.py")!r},
                                                      submodule_search_locations=[{str(pack)!r}])
        module = importlib.util.module_from_spec(spec)
        sys.modules["i2p_comfy"] = module
        spec.loader.exec_module(module)
        node = module.NODE_CLASS_MAPPINGS["Image2Prompt|Interrogate"]
        modes = node.INPUT_TYPES()["required"]["mode"][0]
        assert "plugfast" in modes, modes
        print("ok")
    """)
    node = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=e, timeout=300)
    assert node.returncode == 0 and node.stdout.strip() == "ok", node.stderr
