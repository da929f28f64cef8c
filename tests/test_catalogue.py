"""The catalogue: what can be named and the defaults, listed without loading anything (no torch).

Plugins are real distributions on ``PYTHONPATH`` of a child process, so their registrations
never leak into this test process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import image2prompt
from image2prompt import catalogue
from image2prompt.cli.main import cli
from image2prompt.models._registry import CAPTION_MODELS, DEFAULT_CLIP, TARGETS, open_clip_names
from image2prompt.settings import SearchSettings
from tests.support.plugins import make_plugin_site


def child(code: str, extra_path: Path | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_and_listing_the_catalogue_imports_no_torch() -> None:
    seen = child("""
        import json, sys
        import image2prompt.catalogue as c
        imported = "torch" in sys.modules
        c.list_modes(); c.list_targets(); c.list_captioners(); c.list_clip_models(); c.defaults()
        print(json.dumps({"import": imported, "listed": "torch" in sys.modules,
                          "open_clip": "open_clip" in sys.modules}))
    """)
    assert seen == {"import": False, "listed": False, "open_clip": False}


def test_the_package_exports_the_listing_verbs_lazily() -> None:
    assert image2prompt.list_targets is catalogue.list_targets
    assert image2prompt.list_captioners is catalogue.list_captioners
    assert image2prompt.list_clip_models is catalogue.list_clip_models
    assert image2prompt.list_modes is catalogue.list_modes
    assert {"list_modes", "list_clip_models", "list_captioners", "list_targets"} <= set(image2prompt.__all__)
    seen = child("""
        import json, sys
        import image2prompt
        lazy = "image2prompt.catalogue" not in sys.modules
        targets = [t.name for t in image2prompt.list_targets()]
        print(json.dumps({"lazy": lazy, "targets": targets, "torch": "torch" in sys.modules}))
    """)
    assert seen == {"lazy": True, "targets": ["sd15", "sd2", "sdxl"], "torch": False}


def test_targets_are_the_sd_families_with_their_clip_and_aliases() -> None:
    targets = {t.name: t for t in catalogue.list_targets()}
    assert list(targets) == ["sd15", "sd2", "sdxl"]
    assert targets["sd15"] == catalogue.TargetInfo("sd15", "ViT-L-14/openai", ("sd1", "sd1.5"), default=True)
    assert targets["sd2"].clip == TARGETS["sd2"] and targets["sd2"].aliases == ("sd21", "sd2.1")
    assert not targets["sdxl"].default and targets["sdxl"].aliases == ()
    assert [t.name for t in catalogue.list_targets() if t.default] == [catalogue.DEFAULT_TARGET] == ["sd15"]
    assert targets["sd15"].to_dict() == {"name": "sd15", "clip": DEFAULT_CLIP, "aliases": ("sd1", "sd1.5"),
                                         "default": True}


def test_captioners_mark_what_auto_picks() -> None:
    captioners = catalogue.list_captioners(plugins=False)
    assert [(c.name, c.repo) for c in captioners] == list(CAPTION_MODELS.items())
    assert [c.name for c in captioners if c.default] == ["blip-large"]
    assert [c.name for c in captioners if c.low_vram_default] == ["blip-base"]
    assert not any(c.plugin for c in captioners)


def test_clip_models_and_defaults() -> None:
    assert catalogue.list_clip_models() == (open_clip_names() or [])
    assert catalogue.list_clip_presets() == {"sdxl-dual": ("ViT-L-14/openai", "ViT-bigG-14/laion2b_s39b_b160k")}
    assert catalogue.defaults() == {"target": "sd15", "clip": DEFAULT_CLIP, "captioner": "blip-large",
                                    "low_vram_captioner": "blip-base", "mode": SearchSettings().mode}


PLUGIN = '''
from image2prompt.models import register_captioner
from image2prompt.modes import register_mode
from image2prompt.modes.fast import FastMode


@register_mode
class CatFast(FastMode):
    name = "catfast"


@register_captioner("catcap")
def load(name, **options):
    raise RuntimeError("never loaded here")
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_plugin_site(tmp_path_factory.mktemp("catalogue-plugin"), "i2p_catplug", PLUGIN, "catplug")


def test_plugins_modes_and_captioners_are_listed(plugin_site: Path) -> None:
    seen = child("""
        import json
        from image2prompt import catalogue
        print(json.dumps({"modes": catalogue.list_modes(),
                          "captioners": [c.to_dict() for c in catalogue.list_captioners()],
                          "builtin": [c.name for c in catalogue.list_captioners(plugins=False)]}))
    """, plugin_site)
    assert seen["modes"][-1] == "catfast" and "best" in seen["modes"]
    assert seen["captioners"][-1] == {"name": "catcap", "repo": None, "default": False, "low_vram_default": False,
                                      "plugin": True}
    assert "catcap" not in seen["builtin"]


def test_models_command_lists_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    from image2prompt.cli import models as models_cli

    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "  sd15  ViT-L-14/openai  (default)  also: sd1, sd1.5" in lines
    assert any(re.fullmatch(r"  blip-large +Salesforce/blip-image-captioning-large  \(default\)", line) for line in lines)
    vlms = lines.index("Vision-language captioners (--caption-model; parameters, bf16 weights, licence)")
    assert any(re.fullmatch(r"  qwen2.5-vl-7b +Qwen/Qwen2.5-VL-7B-Instruct  \(8.3B, 17 GB, Apache-2.0\): .+", line)
               for line in lines[vlms:])
    # built from the catalogue: a target it lists is a target the command shows
    extra = catalogue.TargetInfo("sd3", "ViT-X/none", ("sd3.0",))
    monkeypatch.setattr(models_cli, "list_targets", lambda: [*catalogue.list_targets(), extra])
    monkeypatch.setattr(models_cli, "list_clip_models", lambda: [])
    lines = CliRunner().invoke(cli, ["models"]).output.splitlines()
    assert "  sd3   ViT-X/none  also: sd3.0" in lines
    assert lines[-1] == "CLIP models (--clip ARCH/TAG): install open_clip_torch to list them."
