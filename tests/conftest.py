"""Shared fixtures: tiny random-weight models built once per session, offline."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: no test may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.support import tiny_models, vlms

SMALL_VOCAB = {
    "artists": ["Claude Monet", "Hokusai", "Greg Rutkowski", "Frida Kahlo", "Zdzisław Beksiński",
                "Alphonse Mucha", "Ansel Adams", "Moebius"],
    "mediums": ["a photograph", "an oil painting", "a watercolor painting", "a digital painting",
                "a charcoal drawing", "a 3D render", "a pixel art", "a comic book panel"],
    "movements": ["impressionism", "cubism", "art nouveau", "surrealism", "pop art", "minimalism",
                  "baroque", "ukiyo-e"],
    "flavors": ["highly detailed", "sharp focus", "volumetric lighting", "bokeh", "octane render",
                "golden hour", "moody", "pastel colors", "film grain", "dramatic lighting", "8k",
                "concept art", "matte painting", "soft light", "symmetrical", "wide angle lens",
                "studio lighting", "vibrant colors", "muted colors", "neon lights", "cinematic",
                "depth of field", "trending", "hyperrealistic", "low poly", "isometric", "ethereal",
                "gloomy", "whimsical", "retro", "futuristic", "vintage", "grainy", "crisp",
                "high contrast", "silhouette", "backlit", "foggy", "rainy", "sunny day",
                "blue and orange", "black and white", "sepia", "long exposure", "tilt shift",
                "macro", "aerial view", "close up", "portrait", "landscape"],
    "negative": ["blurry", "low quality", "jpeg artifacts", "watermark", "text", "deformed",
                 "ugly", "bad anatomy"],
}


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every cache and home path at tmp so tests never touch the user's files."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("IMAGE2PROMPT_CACHE_DIR", str(home / "i2p-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _restore_package_logger() -> Iterator[None]:
    """CLI tests run the commands in-process, and a command sets up the package logger for a
    real process (handlers, no propagation); undo that for the next test."""
    logger = logging.getLogger("image2prompt")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_open_clip(models_dir: Path) -> Path:
    return tiny_models.make_open_clip_dir(models_dir / "tiny-open-clip")


@pytest.fixture(scope="session")
def tiny_hf_clip(models_dir: Path) -> Path:
    return tiny_models.make_hf_clip_dir(models_dir / "tiny-hf-clip")


@pytest.fixture(scope="session")
def tiny_blip(models_dir: Path) -> Path:
    return tiny_models.make_blip_dir(models_dir / "tiny-blip")


@pytest.fixture(scope="session")
def small_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small vocabulary folder laid out like the reference's data folder."""
    d = tmp_path_factory.mktemp("vocab")
    for name, lines in SMALL_VOCAB.items():
        (d / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def make_images(n: int, size: int = 72) -> list[Image.Image]:
    """Varied, deterministic images: noise, gradients, shapes, flat colours."""
    rng = np.random.RandomState(1234)
    images: list[Image.Image] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            arr = (rng.rand(size, size, 3) * 255).astype("uint8")
            img = Image.fromarray(arr)
        elif kind == 1:
            x = np.linspace(0, 1, size)
            c = rng.rand(3)
            arr = (np.outer(x, np.ones(size))[..., None] * c * 255).astype("uint8")
            img = Image.fromarray(arr)
        elif kind == 2:
            img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.randint(0, 255, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(3):
                x0, y0 = rng.randint(0, size // 2, 2)
                draw.ellipse([x0, y0, x0 + size // 3, y0 + size // 3], fill=tuple(int(v) for v in rng.randint(0, 255, 3)))
        else:
            img = Image.new("RGB", (size + i, size), tuple(int(v) for v in rng.randint(0, 255, 3)))
        images.append(img)
    return images


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    return make_images(28)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good images and one corrupt file, in a folder with a subfolder."""
    d = tmp_path_factory.mktemp("imgs")
    imgs = make_images(3)
    imgs[0].save(d / "a.png")
    (d / "sub").mkdir()
    imgs[1].save(d / "sub" / "b.JPG", format="JPEG")
    imgs[2].save(d / "c.webp", format="WEBP")
    (d / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    (d / "notes.txt").write_text("ignored")
    return d


# Tiny random-weight vision-language models (tests/support/vlms.py), built once per session.
@pytest.fixture(scope="session")
def tiny_llava(models_dir: Path) -> Path:
    """A tiny Llava folder (JoyCaption's architecture)."""
    return vlms.make_llava_dir(models_dir / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_qwen2_vl(models_dir: Path) -> Path:
    return vlms.make_qwen2_vl_dir(models_dir / "tiny-qwen2-vl")


@pytest.fixture(scope="session")
def tiny_gemma3(models_dir: Path) -> Path:
    return vlms.make_gemma3_dir(models_dir / "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_florence2(models_dir: Path) -> Path:
    return vlms.make_florence2_dir(models_dir / "tiny-florence2")
