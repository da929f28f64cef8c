"""Model plugins: decorators, the ``image2prompt.plugins`` entry points, and their failures."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from image2prompt.errors import ModelLoadError
from image2prompt.models import (
    _registry,
    load_captioner,
    load_clip,
    parse_caption_name,
    parse_clip_name,
    register_captioner,
    register_clip_backend,
)
from image2prompt.models.clip import ClipEncoder


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    """A registry of its own for each test: entry points counted as loaded, nothing leaks out."""
    monkeypatch.setattr(_registry, "_CLIP_PLUGINS", dict(_registry._CLIP_PLUGINS))
    monkeypatch.setattr(_registry, "_CAPTIONER_PLUGINS", dict(_registry._CAPTIONER_PLUGINS))
    monkeypatch.setattr(_registry, "_plugins_loaded", True)
    return _registry


class SizeCaptioner:
    """A plugin captioner: no torch, no weights; it describes each image's size."""

    def __init__(self, name: str, **settings) -> None:
        self.name = name
        self.settings = settings
        self.batches: list[int] = []

    def caption(self, images, *, batch_size: int = 8) -> list[str]:
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            self.batches.append(len(chunk))
            out += [f"an image of {im.width} by {im.height} pixels" for im in chunk]
        return out


def test_a_decorated_captioner_loads_by_name_and_captions(registry, images):
    @register_captioner("size-captioner")
    def load(name, *, device, precision, max_new_tokens, **options):
        return SizeCaptioner(name, device=device, precision=precision, max_new_tokens=max_new_tokens, **options)

    spec = parse_caption_name("size-captioner")
    assert spec.kind == "plugin" and spec.name == "size-captioner"
    cap = load_captioner("size-captioner", device="cpu", max_new_tokens=7, style="terse")
    assert isinstance(cap, _registry.CaptionerLike)
    assert cap.settings == {"device": "cpu", "precision": "auto", "max_new_tokens": 7, "style": "terse"}
    texts = cap.caption(images[:3], batch_size=2)
    assert texts == [f"an image of {im.width} by {im.height} pixels" for im in images[:3]]
    assert cap.batches == [2, 1]
    # Only that exact name is claimed; the hint for unknown names lists it.
    with pytest.raises(ModelLoadError, match="blip-base.*size-captioner"):
        parse_caption_name("size-captioner-2")


def test_a_captioner_scheme_claims_every_name_with_its_prefix(registry):
    @register_captioner("sizes:")
    def load(name, **kw):
        return SizeCaptioner(name)

    assert load_captioner("sizes:big").name == "sizes:big"
    assert parse_caption_name("sizes:small").kind == "plugin"
    with pytest.raises(ModelLoadError, match=r"sizes:\.\.\."):
        parse_caption_name("sizesbig")


def test_plugin_failures_are_model_load_errors(registry):
    @register_captioner("broken-captioner")
    def broken(name, **kw):
        raise RuntimeError("weights\nnot here " + "x " * 400)

    @register_captioner("not-a-captioner")
    def wrong(name, **kw):
        return object()

    with pytest.raises(ModelLoadError, match="could not load caption model 'broken-captioner': weights not here") as e:
        load_captioner("broken-captioner")
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    with pytest.raises(ModelLoadError, match="lacks name: str and caption"):
        load_captioner("not-a-captioner")


def test_a_clip_backend_plugin_wraps_the_tiny_open_clip_model(registry, tiny_open_clip: Path):
    seen = {}

    @register_clip_backend("tinyplug:")
    def load(name, *, device, precision, memory_budget_mb, **options):
        seen.update(name=name, device=device, precision=precision, memory_budget_mb=memory_budget_mb, **options)
        return load_clip(f"local-dir:{tiny_open_clip}", device=device, precision=precision,
                         memory_budget_mb=memory_budget_mb)

    spec = parse_clip_name("tinyplug:x")
    assert spec.backend == "plugin" and spec.name == "tinyplug:x"
    assert "tinyplug:" in registry.clip_plugin_names()
    enc = load_clip("tinyplug:x", device="cpu", memory_budget_mb=64, flavour="plain")
    assert isinstance(enc, ClipEncoder)
    assert seen == {"name": "tinyplug:x", "device": "cpu", "precision": "auto", "memory_budget_mb": 64,
                    "flavour": "plain"}
    assert enc.memory_budget == 64 * 2**20
    direct = load_clip(f"local-dir:{tiny_open_clip}", device="cpu")
    texts = ["a photo of a dog", "an oil painting"]
    np.testing.assert_allclose(enc.encode_texts(texts), direct.encode_texts(texts), atol=1e-6)
    np.testing.assert_allclose(enc.encode_extensions("a photo", ["x", "y"]),
                               direct.encode_extensions("a photo", ["x", "y"]), atol=1e-6)


def test_clip_plugin_names_and_errors(registry):
    @register_clip_backend("my-clip")
    def exact(name, **kw):
        return "not an encoder"

    @register_clip_backend("a:")
    def short(name, **kw):
        raise ModelLoadError(f"{name}: short scheme")

    @register_clip_backend("a:b:")
    def long(name, **kw):
        raise ModelLoadError(f"{name}: long scheme")

    with pytest.raises(ModelLoadError, match="returned str, not a ClipEncoder"):
        load_clip("my-clip")
    with pytest.raises(ModelLoadError, match="needs a pretrained tag"):  # exactly that name, nothing else
        parse_clip_name("my-clip2")
    with pytest.raises(ModelLoadError, match="a:b:x: long scheme"):  # the longest scheme wins
        load_clip("a:b:x")
    with pytest.raises(ModelLoadError, match="a:x: short scheme"):
        load_clip("a:x")
    for builtin in ("local-dir:", "hf-hub:", "hf:"):
        with pytest.raises(ValueError, match="built in"):
            register_clip_backend(builtin)
    with pytest.raises(ValueError):
        register_captioner(" spaced ")
    # Unknown names keep their messages.
    with pytest.raises(ModelLoadError, match="known tags for ViT-L-14"):
        parse_clip_name("ViT-L-14/nonsense")


# -- entry points ------------------------------------------------------------

FAKEPLUG = '''
from image2prompt.models import register_captioner


class Fake:
    def __init__(self, name):
        self.name = name

    def caption(self, images, *, batch_size=8):
        return ["a fake caption"] * len(images)


@register_captioner("fake-captioner")
def load(name, **kw):
    return Fake(name)


def register():
    @register_captioner("fake-called")
    def load_called(name, **kw):
        return Fake(name)


def boom():
    raise RuntimeError("this plugin is broken")
'''


def install_fake_distribution(root: Path, entry_points: str) -> None:
    """A distribution on sys.path the way pip installs one: a module and its dist-info."""
    (root / "fakeplug_mod.py").write_text(FAKEPLUG, encoding="utf-8")
    info = root / "fakeplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip(), encoding="utf-8")


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry):
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates the import caches
    monkeypatch.setattr(_registry, "_plugins_loaded", False)
    monkeypatch.delitem(sys.modules, "fakeplug_mod", raising=False)
    yield tmp_path
    sys.modules.pop("fakeplug_mod", None)


def test_entry_point_plugins_are_loaded_once_at_the_first_lookup(fake_site: Path, images,
                                                                 monkeypatch: pytest.MonkeyPatch):
    install_fake_distribution(fake_site, """
        [image2prompt.plugins]
        fake = fakeplug_mod
        called = fakeplug_mod:register
    """)
    assert "fakeplug_mod" not in sys.modules  # nothing is loaded before a name is looked up
    spec = parse_caption_name("fake-captioner")
    assert spec.kind == "plugin" and _registry._plugins_loaded
    cap = load_captioner("fake-captioner")
    assert cap.caption(images[:2]) == ["a fake caption"] * 2
    assert load_captioner("fake-called").name == "fake-called"  # a callable entry point was called
    # Loaded once: later lookups never list entry points again, and dropping a
    # registration does not bring it back.
    import importlib.metadata

    listed = []
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: listed.append(kw) or [])
    assert parse_caption_name("fake-captioner").kind == "plugin"
    assert listed == []
    del _registry._CAPTIONER_PLUGINS["fake-called"]
    with pytest.raises(ModelLoadError, match="unknown caption model 'fake-called'.*fake-captioner"):
        parse_caption_name("fake-called")


def test_a_broken_plugin_is_one_warning_not_a_crash(fake_site: Path, caplog: pytest.LogCaptureFixture):
    install_fake_distribution(fake_site, """
        [image2prompt.plugins]
        missing = fakeplug_no_such_module
        raising = fakeplug_mod:boom
        fake = fakeplug_mod
    """)
    with caplog.at_level(logging.WARNING, logger="image2prompt.models._registry"):
        assert parse_caption_name("fake-captioner").kind == "plugin"  # the good one still loads
        with pytest.raises(ModelLoadError, match="unknown caption model"):
            parse_caption_name("blip-huge")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    by_name = {("missing" if "'missing'" in r.getMessage() else "raising"): r.getMessage() for r in warnings}
    assert "fakeplug_no_such_module" in by_name["missing"] and "No module named" in by_name["missing"]
    assert "fakeplug_mod:boom" in by_name["raising"] and "this plugin is broken" in by_name["raising"]
    assert all("\n" not in m for m in by_name.values())
