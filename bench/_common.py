"""Shared helpers for the benchmark scripts in bench/.

Nothing here loads a model at import time; torch is imported lazily. The
repository root is put on ``sys.path`` so ``tests.support.tiny_models`` (the
random-weight model builders) can be used.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from image2prompt.vocab import TRENDING_SITES, clean_labels, expand_artists, expand_trending
from image2prompt.vocab.packs import read_list

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

#: Fixed, plausible captions, passed as the caption to both implementations.
CAPTIONS: tuple[str, ...] = (
    "a photo of a dog", "a painting of a woman sitting on a table", "a red square",
    "a blue circle on a green background", "an oil painting of a tree", "a man standing in the street",
    "a watercolor painting of the sky", "a photograph of water", "a cat", "a drawing of a house",
    "a picture of a red car, parked", "abstract shapes",
)


def timed_search(it: Any, feats: Sequence[Any], settings: Any, repeats: int = 1) -> tuple[list[Any], float]:
    """One search over ``feats``: the results in input order, and seconds per image (the
    fastest of ``repeats``), after one untimed image so tables and caches are ready."""
    import time

    list(it.search_indexed(feats[:1], settings))
    best, results = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = dict(it.search_indexed(feats, settings))
        best = min(best, time.perf_counter() - t0)
        results = [out[i] for i in range(len(feats))]
    return results, best / max(1, len(feats))


def offline_env() -> None:
    """No network: set before anything imports huggingface_hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# -- images ------------------------------------------------------------------
def make_images(n: int, size: int = 256, seed: int = 1234) -> list[Any]:
    """Varied, deterministic RGB images: noise, gradients, shapes, flat colours (like tests/conftest.py)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(seed)
    images = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))
        elif kind == 1:
            x = np.linspace(0, 1, size)
            c = rng.rand(3)
            img = Image.fromarray((np.outer(x, np.ones(size))[..., None] * c * 255).astype("uint8"))
        elif kind == 2:
            img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.randint(0, 255, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(3):
                x0, y0 = rng.randint(0, size // 2, 2)
                draw.ellipse([x0, y0, x0 + size // 3, y0 + size // 3],
                             fill=tuple(int(v) for v in rng.randint(0, 255, 3)))
        else:
            img = Image.new("RGB", (size + i, size), tuple(int(v) for v in rng.randint(0, 255, 3)))
        images.append(img)
    return images


# -- models ------------------------------------------------------------------
SIZES = {"b32": ("VIT_B_32", "ViT-B-32"), "l14": ("VIT_L_14", "ViT-L-14")}
#: what ``--sizes`` accepts: each size, and its bag-of-words-text variant
SIZE_NAMES = (*SIZES, *(f"{s}-bow" for s in SIZES))


def ensure_models(models_dir: Path, sizes: Sequence[str], seed: int = 0, log=print) -> dict[str, Path]:
    """Random-weight open_clip ``local-dir:`` folders at real tower sizes, built once and reused.

    A size ending in ``-bow`` (``b32-bow``, ``l14-bow``) is the same random model with a
    bag-of-words text tower: see :func:`bag_of_words_text`.
    """
    from tests.support import tiny_models

    out: dict[str, Path] = {}
    for size in sizes:
        base, bow = size.removesuffix("-bow"), size.endswith("-bow")
        if base not in SIZES:
            raise SystemExit(f"unknown size {size!r}: choose from {', '.join(SIZE_NAMES)}")
        cfg_name, _ = SIZES[base]
        d = models_dir / f"{size}-seed{seed}"
        if not ((d / "open_clip_config.json").exists() and (d / "open_clip_model.safetensors").exists()):
            if bow:
                src = ensure_models(models_dir, [base], seed, log)[base]
                log(f"building the bag-of-words variant of {src} in {d}")
                bag_of_words_text(src, d)
            else:
                log(f"building random-weight {cfg_name} model in {d} (seed {seed})")
                tiny_models.make_open_clip_dir(d, getattr(tiny_models, cfg_name), seed=seed)
        out[size] = d
    return out


def bag_of_words_text(src: Path, dst: Path) -> Path:
    """Copy a random open_clip model with its text tower's query and key projections zeroed.

    Every attention score is then 0, so each text position attends uniformly to the
    positions before it: the EOT embedding is built from averages of the tokens, not
    from their order. Real CLIP text towers behave much like bags of words (Yuksekgonul
    et al., "When and why vision-language models behave like bags-of-words", ICLR 2023),
    which a fully random tower does not: there, one chain step's gains barely predict the
    next (``bench/landscape.py``). The image tower is untouched.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "open_clip_config.json", dst / "open_clip_config.json")
    state = load_file(str(src / "open_clip_model.safetensors"))
    for key, value in state.items():
        if key.startswith("transformer.") and key.endswith("attn.in_proj_weight"):
            value[: 2 * value.shape[1]] = 0  # rows of q and k; v is kept
        elif key.startswith("transformer.") and key.endswith("attn.in_proj_bias"):
            value[: 2 * (value.shape[0] // 3)] = 0
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst / "open_clip_model.safetensors"))
    return dst


# -- vocabulary samples --------------------------------------------------------
def _read(path: Path) -> list[str]:
    """A list as the reference reads it, then stripped of blanks and duplicates."""
    return clean_labels(read_list(path))


def _sample(items: list[str], n: int | None, rng: random.Random) -> list[str]:
    """A deterministic sample that keeps the list's own order."""
    if n is None or n >= len(items):
        return list(items)
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


def write_vocab_sample(out_dir: Path, data_dir: Path, *, flavors: int | None, artists: int | None,
                       seed: int = 0, raw_quirks: bool = False) -> dict[str, int]:
    """Write a reference-layout folder (artists, flavors, mediums, movements, negative .txt).

    Lists are stripped, blanks and duplicates dropped, and no label appears in two
    tables (counting the expanded "by X" / "inspired by X" artist labels and the
    trending labels), so both implementations see exactly the same candidates.
    With ``raw_quirks`` flavors.txt also gets one blank line and one repeated flavor
    (as the real flavors.txt has), so the reference's raw list differs from the
    cleaned one. Returns the number of distinct labels per file.
    """
    rng = random.Random(seed)
    mediums = _read(data_dir / "mediums.txt")
    taken = set(mediums)
    movements = [m for m in _read(data_dir / "movements.txt") if m not in taken]
    taken.update(movements)
    negative = [m for m in _read(data_dir / "negative.txt") if m not in taken]
    taken.update(negative)
    taken.update(expand_trending(TRENDING_SITES))
    artist_pool = [a for a in _read(data_dir / "artists.txt")
                   if f"by {a}" not in taken and f"inspired by {a}" not in taken]
    arts = _sample(artist_pool, artists, rng)
    taken.update(expand_artists(arts))
    flavor_pool = [f for f in _read(data_dir / "flavors.txt") if f not in taken]
    flavs = _sample(flavor_pool, flavors, rng)
    lists = {"artists": arts, "flavors": flavs, "mediums": mediums, "movements": movements, "negative": negative}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in lists.items():
        lines = list(items)
        if raw_quirks and name == "flavors" and len(lines) >= 2:
            mid = len(lines) // 2
            lines = lines[:mid] + [""] + lines[mid:] + [lines[0]]  # a blank line and a repeat
        (out_dir / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {k: len(v) for k, v in lists.items()}


def modes_sample(out: Path, flavors: int | None, artists: int | None) -> tuple[Path, dict[str, int], Path]:
    """The vocabulary sample that modes.py and landscape.py share, its counts, and its table-cache root.

    Both scripts name the sample by its sizes and keep one cache folder per sample, so
    their runs reuse each other's tables and samples of different sizes never collide.
    """
    from image2prompt.vocab import reference_data_dir

    vocab_dir = out / f"vocab-modes-{flavors or 'all'}-{artists or 'all'}"
    counts = write_vocab_sample(vocab_dir, reference_data_dir(), flavors=flavors, artists=artists)
    return vocab_dir, counts, out / "cache-modes" / vocab_dir.name


def table_label_count(counts: dict[str, int]) -> int:
    """Labels in all tables built from such a folder (artists doubled, plus 72 trending labels)."""
    return 2 * counts["artists"] + counts["flavors"] + counts["mediums"] + counts["movements"] \
        + counts["negative"] + len(expand_trending(TRENDING_SITES))


# -- measurement ---------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB.

    On Linux this is ``VmHWM`` from /proc/self/status: the high-water mark of this
    program's own address space. ``ru_maxrss`` is not used there because Linux
    carries it across fork+exec, so a worker would report its parent's peak (the
    driver builds the models) whenever that is higher.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / (1024 * 1024)


def run_worker(script: Path, spec: dict, work_dir: Path, log=print) -> dict:
    """Run ``script --worker spec.json`` in a fresh interpreter; return its JSON result."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = spec["tag"]
    spec_path = work_dir / f"{tag}.spec.json"
    out_path = work_dir / f"{tag}.result.json"
    if out_path.exists():
        out_path.unlink()
    spec = dict(spec, result_path=str(out_path))
    spec_path.write_text(json.dumps(spec, indent=1))
    env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log(f"  [{tag}] running ...")
    proc = subprocess.run([sys.executable, str(script), "--worker", str(spec_path)], env=env,
                          capture_output=True, text=True)
    (work_dir / f"{tag}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0 or not out_path.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        log(f"  [{tag}] FAILED (exit {proc.returncode}):\n{tail}")
        return {"error": f"exit {proc.returncode}", "tail": tail}
    return json.loads(out_path.read_text())


# -- reporting -----------------------------------------------------------------
def machine_info(device: str) -> dict[str, str]:
    info: dict[str, str] = {}
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu
    info["cores"] = str(os.cpu_count())
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch threads"] = str(torch.get_num_threads())
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        info["torch"] = "not installed"
    import importlib.metadata as md

    for dist in ("open_clip_torch", "clip-interrogator", "image2prompt"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = "not installed"
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if rev:
            info["commit"] = rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    info["device"] = device
    info["python"] = platform.python_version()
    info["date"] = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return info


def code_version() -> str:
    """The checkout's commit, plus a hash of the modified tracked files under src/ (others edit concurrently)."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        diff = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "HEAD", "--", "src"],
                              capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not rev:
        return "unknown"
    if diff:
        import hashlib

        return f"{rev}+dirty:{hashlib.sha256(diff.encode()).hexdigest()[:8]}"
    return rev


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0], REPO_ROOT), *sys.argv[1:]])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def emit_report(device: str, notes: Sequence[str], headers: Sequence[str], rows: Sequence[Sequence[Any]],
                markdown_out: str | None) -> str:
    """Print (and optionally write) a report: command, machine, notes, then a Markdown table."""
    info = machine_info(device)
    text = "\n".join([
        f"command: `{command_line()}`",
        "machine: " + ", ".join(f"{k}: {v}" for k, v in info.items()),
        *notes,
        "",
        markdown_table(headers, rows),
    ])
    print(text)
    if markdown_out:
        Path(markdown_out).write_text(text + "\n")
    return text
