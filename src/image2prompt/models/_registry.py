"""Model names: parsing, targets and the captioner table (no torch here).

CLIP names follow open_clip: ``ARCH/TAG`` (``ViT-L-14/openai``), ``local-dir:PATH``
and ``hf-hub:ORG/REPO``. The transformers backend is ``hf:ORG/REPO`` or a
``save_pretrained`` folder. Names carry their source, so the model name and its
weights are never confused (``local-dir:`` paths contain slashes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ModelLoadError

DEFAULT_CLIP = "ViT-L-14/openai"
DEFAULT_CAPTIONER = "blip-large"

#: Stable Diffusion family -> the CLIP backbone its text encoder was trained with.
TARGETS: dict[str, str] = {
    "sd15": "ViT-L-14/openai",
    "sd2": "ViT-H-14/laion2b_s32b_b79k",
    "sdxl": "ViT-bigG-14/laion2b_s39b_b160k",
}
#: Named sets of CLIP models scored together (the mean similarity), for --clip.
CLIP_PRESETS: dict[str, tuple[str, ...]] = {
    # SDXL conditions on both OpenAI ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders.
    "sdxl-dual": ("ViT-L-14/openai", "ViT-bigG-14/laion2b_s39b_b160k"),
}

TARGET_ALIASES: dict[str, str] = {"sd1": "sd15", "sd1.5": "sd15", "sd21": "sd2", "sd2.1": "sd2"}

#: Captioner short names -> Hugging Face repositories (the reference's table).
CAPTION_MODELS: dict[str, str] = {
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
    "blip2-2.7b": "Salesforce/blip2-opt-2.7b",
    "blip2-flan-t5-xl": "Salesforce/blip2-flan-t5-xl",
    "git-large-coco": "microsoft/git-large-coco",
}

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
HF_TRANSFORMERS = "hf:"

ClipBackendName = Literal["open_clip", "transformers"]
CaptionKind = Literal["blip", "blip2", "git"]


@dataclass(frozen=True)
class ClipSpec:
    """A parsed CLIP model name."""

    name: str  # as the user wrote it (shown in results)
    backend: ClipBackendName
    source: str  # what the backend's loader is given
    pretrained: str | None = None  # open_clip pretrained tag, for ARCH/TAG names
    local_path: Path | None = None

    @property
    def cache_key(self) -> str:
        """Name used for cache files. Local folders add a fingerprint of their weights,
        so retraining a model in the same folder can never reuse stale embeddings."""
        if self.local_path is None:
            return self.name
        return f"local_{self.local_path.name}_{_folder_fingerprint(self.local_path)}"


@dataclass(frozen=True)
class CaptionSpec:
    name: str
    kind: CaptionKind
    source: str
    local_path: Path | None = None


def expand_clip_names(names: "list[str] | tuple[str, ...]") -> list[str]:
    """Expand presets such as ``sdxl-dual``; keep order, drop repeats."""
    out: list[str] = []
    for name in names:
        for n in CLIP_PRESETS.get(name.strip().lower(), (name,)):
            if n not in out:
                out.append(n)
    return out


def resolve_target(target: str) -> str:
    key = TARGET_ALIASES.get(target.lower(), target.lower())
    if key not in TARGETS:
        raise ModelLoadError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[key]


def _folder_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        if p.is_file() and p.suffix in {".safetensors", ".bin", ".json", ".pt"}:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read model config ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: model config is not a JSON object")
    return data


def _local_clip_spec(name: str, path: Path) -> ClipSpec:
    if not path.is_dir():
        raise ModelLoadError(f"{name}: folder {path} not found")
    if (path / "open_clip_config.json").is_file():
        weights = [p for p in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin") if (path / p).is_file()]
        if not weights:
            raise ModelLoadError(
                f"{name}: {path} has open_clip_config.json but no weights "
                "(open_clip_model.safetensors); refusing to run with random weights"
            )
        return ClipSpec(name, "open_clip", f"{LOCAL_DIR}{path}", local_path=path)
    if (path / "config.json").is_file():
        model_type = _read_json(path / "config.json").get("model_type")
        if model_type != "clip":
            raise ModelLoadError(
                f"{name}: {path} holds a transformers model of type {model_type!r}, not a CLIP model"
            )
        return ClipSpec(name, "transformers", str(path), local_path=path)
    raise ModelLoadError(
        f"{name}: {path} is neither an open_clip folder (open_clip_config.json) "
        "nor a transformers save_pretrained folder (config.json)"
    )


def parse_clip_name(name: str) -> ClipSpec:
    """Parse a CLIP model name without loading anything; unknown names raise."""
    name = name.strip()
    if not name:
        raise ModelLoadError("empty CLIP model name")
    if name.startswith(LOCAL_DIR):
        raw = name[len(LOCAL_DIR):]
        if not raw:
            raise ModelLoadError("local-dir: needs a folder, e.g. local-dir:/models/my-clip")
        return _local_clip_spec(name, Path(raw).expanduser().resolve())
    if name.startswith(HF_HUB):
        if "/" not in name[len(HF_HUB):]:
            raise ModelLoadError(f"{name}: expected hf-hub:ORG/REPO")
        return ClipSpec(name, "open_clip", name)
    if name.startswith(HF_TRANSFORMERS):
        repo = name[len(HF_TRANSFORMERS):]
        if "/" not in repo:
            raise ModelLoadError(f"{name}: expected hf:ORG/REPO, e.g. hf:openai/clip-vit-large-patch14")
        return ClipSpec(name, "transformers", repo)
    if os.path.isdir(name):
        return _local_clip_spec(name, Path(name).expanduser().resolve())
    if "/" not in name:
        raise ModelLoadError(
            f"CLIP model {name!r} needs a pretrained tag: write ARCH/TAG as open_clip lists them "
            f"(e.g. {DEFAULT_CLIP}); `image2prompt models` lists them. "
            "Use 'local-dir:PATH' for a local folder or 'hf-hub:ORG/REPO' for the Hub."
        )
    arch, tag = name.split("/", 1)
    known = known_open_clip_pairs()
    if known is not None and (arch, tag) not in known:
        tags = sorted(t for a, t in known if a == arch)
        if tags:
            hint = f"known tags for {arch}: {', '.join(tags)}"
        else:
            hint = "`image2prompt models` lists the known ARCH/TAG names"
        raise ModelLoadError(f"unknown CLIP model {name!r}; {hint}")
    return ClipSpec(name, "open_clip", arch, pretrained=tag)


def known_open_clip_pairs() -> set[tuple[str, str]] | None:
    """open_clip's (arch, tag) pairs, or None when open_clip is not installed."""
    try:
        import open_clip
    except ImportError:
        return None
    return {(a, t) for a, t in open_clip.list_pretrained()}


def parse_caption_name(name: str) -> CaptionSpec:
    """Parse a captioner name: a short name, ``local-dir:PATH``, a folder, or ``hf:ORG/REPO``."""
    name = name.strip()
    if name in CAPTION_MODELS:
        repo = CAPTION_MODELS[name]
        kind: CaptionKind = "git" if name.startswith("git-") else "blip2" if name.startswith("blip2-") else "blip"
        return CaptionSpec(name, kind, repo)
    if name.startswith(LOCAL_DIR) or os.path.isdir(name):
        raw = name[len(LOCAL_DIR):] if name.startswith(LOCAL_DIR) else name
        path = Path(raw).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{name}: {path} is not a transformers save_pretrained folder (no config.json)")
        return CaptionSpec(name, _caption_kind(_read_json(path / "config.json").get("model_type"), name), str(path), path)
    if name.startswith(HF_TRANSFORMERS):
        repo = name[len(HF_TRANSFORMERS):]
        lowered = repo.lower()
        kind = "git" if "/git-" in lowered else "blip2" if "blip2" in lowered else "blip"
        return CaptionSpec(name, kind, repo)
    raise ModelLoadError(
        f"unknown caption model {name!r}; choose one of: {', '.join(CAPTION_MODELS)}, "
        "'local-dir:PATH', 'hf:ORG/REPO', or 'none' with --caption TEXT"
    )


def _caption_kind(model_type: object, name: str) -> CaptionKind:
    table: dict[object, CaptionKind] = {"blip": "blip", "blip-2": "blip2", "blip_2": "blip2", "git": "git"}
    if model_type not in table:
        raise ModelLoadError(
            f"{name}: captioner model type {model_type!r} is not supported (blip, blip-2 or git)"
        )
    return table[model_type]
