"""Model names: parsing, targets, the captioner table and model plugins (no torch here).

CLIP names follow open_clip: ``ARCH/TAG`` (``ViT-L-14/openai``), ``local-dir:PATH``
and ``hf-hub:ORG/REPO``. The transformers backend is ``hf:ORG/REPO`` or a
``save_pretrained`` folder. Names carry their source, so the model name and its
weights are never confused (``local-dir:`` paths contain slashes).

Why one module over 500 lines: it is the one torch-free place every front end and the
catalogue read names from (CLIP, captioners, VLM presets, targets, plugins); split, the
names would need a second module that imports this one back for the plugin registry.

Plugins
-------
Other packages add CLIP backends and captioners by registering loaders::

    from image2prompt.models import register_captioner, register_clip_backend

    @register_captioner("my-captioner")            # claims exactly this name
    def load(name, *, device, precision, max_new_tokens, **options):
        return MyCaptioner(...)                    # any CaptionerLike

    @register_clip_backend("myclip:")              # claims every name starting with "myclip:"
    def load(name, *, device, precision, memory_budget_mb, **options):
        return MyEncoder(...)                      # a ClipEncoder subclass

A key ending in ``:`` is a scheme and claims every name with that prefix (the
longest matching scheme wins); any other key claims exactly that name. Loaders get
the name as the user wrote it, ``device`` and ``precision`` as strings (``"auto"``
by default) and raise :class:`~image2prompt.errors.ModelLoadError` when they
cannot load; other exceptions are turned into one. ``load_clip`` and
``load_captioner`` ask the plugins first, so a plugin may also replace a built-in
short name (the ``local-dir:``, ``hf-hub:`` and ``hf:`` schemes are reserved).

A captioner is any object with ``name: str`` and
``caption(images, *, batch_size) -> list[str]`` (:class:`CaptionerLike`); it may
also have ``offload()`` and ``activate()``, which are called only when present.
Captions are returned raw: the caller cleans them.

Packages announce plugins with an entry point in the group ``image2prompt.plugins``
(``[project.entry-points."image2prompt.plugins"] myplug = "myplug.register"``):
a module, imported for its registrations, or a callable, called with no
arguments. They are loaded once, at the first registry lookup
(:func:`load_plugins`); one that fails is logged as a single warning and skipped.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from ..errors import ModelLoadError, one_line

log = logging.getLogger(__name__)

DEFAULT_CLIP = "ViT-L-14/openai"
DEFAULT_CAPTIONER = "blip-large"
LOW_VRAM_CAPTIONER = "blip-base"  # what caption_model="auto" picks with low_vram

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


@dataclass(frozen=True)
class VLMPreset:
    """A vision-language captioner known by a short name: its repository, kind, parameters,
    weights in bf16 (what it needs on the device, before activations), licence and strength."""

    repo: str
    kind: str  # "vlm" or "florence2"
    params: str
    memory: str
    licence: str
    good_at: str


#: Short names for the VLMs people caption with (sizes from their model cards, memory = bf16 weights).
VLM_PRESETS: dict[str, VLMPreset] = {
    "joycaption-beta-one": VLMPreset("fancyfeast/llama-joycaption-beta-one-hf-llava", "vlm", "8.5B", "17 GB",
                                     "Llama 3.1", "training captions, every style and content, booru tags"),
    "qwen2.5-vl-3b": VLMPreset("Qwen/Qwen2.5-VL-3B-Instruct", "vlm", "3.8B", "8 GB", "Qwen research",
                               "accurate short captions, reading text in images"),
    "qwen2.5-vl-7b": VLMPreset("Qwen/Qwen2.5-VL-7B-Instruct", "vlm", "8.3B", "17 GB", "Apache-2.0",
                               "detailed, faithful descriptions, text in images"),
    "qwen3-vl-4b": VLMPreset("Qwen/Qwen3-VL-4B-Instruct", "vlm", "4.4B", "9 GB", "Apache-2.0",
                             "detailed descriptions on a mid-range card"),
    "gemma-3-4b": VLMPreset("google/gemma-3-4b-it", "vlm", "4.3B", "9 GB", "Gemma terms",
                            "fluent general descriptions"),
    "smolvlm2-2.2b": VLMPreset("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "vlm", "2.2B", "5 GB", "Apache-2.0",
                               "small cards and CPUs, short captions"),
    "florence-2-base": VLMPreset("florence-community/Florence-2-base", "florence2", "0.23B", "0.5 GB", "MIT",
                                 "fast plain captions (task tokens, no instructions)"),
    "florence-2-large": VLMPreset("florence-community/Florence-2-large", "florence2", "0.77B", "1.6 GB", "MIT",
                                  "fast detailed captions (task tokens, no instructions)"),
}
CAPTION_MODELS.update({name: preset.repo for name, preset in VLM_PRESETS.items()})

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
HF_TRANSFORMERS = "hf:"
#: A VLM behind an OpenAI-compatible API: ``openai:MODEL`` (models/remote.py, no torch).
REMOTE = "openai:"

ClipBackendName = Literal["open_clip", "transformers", "plugin"]
CaptionKind = Literal["blip", "blip2", "git", "vlm", "florence2", "plugin", "remote"]

#: ``model_type``s of the chat vision-language models loaded in process as captioners
#: (``AutoModelForImageTextToText``, models/vlm.py); any other type transformers maps there is one too.
VLM_MODEL_TYPES = frozenset({
    "llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe",
    "gemma3", "smolvlm", "idefics2", "idefics3", "mistral3", "paligemma", "internvl", "aya_vision",
})
#: Repository name fragments that say "VLM" for an ``hf:`` name whose config is not cached yet.
_VLM_NAME_HINTS = ("llava", "joycaption", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "smolvlm", "idefics",
                   "gemma-3-4b", "gemma-3-12b", "gemma-3-27b", "paligemma", "internvl")

#: Entry-point group of plugin modules (or callables) that register loaders when loaded.
PLUGIN_GROUP = "image2prompt.plugins"
_RESERVED_SCHEMES = (LOCAL_DIR, HF_HUB, HF_TRANSFORMERS, REMOTE)

Loader = Callable[..., Any]
L = TypeVar("L", bound=Loader)


@runtime_checkable
class CaptionerLike(Protocol):
    """What a captioner is: a name and batched captioning of PIL images.

    ``caption`` returns the raw decoded text, one string per image, in order.
    Objects may also define ``offload()`` (move weights off the accelerator) and
    ``activate()`` (move them back); callers use them only when present.
    """

    name: str

    def caption(self, images: Sequence[Any], *, batch_size: int = ...) -> list[str]: ...


_CLIP_PLUGINS: dict[str, Loader] = {}
_CAPTIONER_PLUGINS: dict[str, Loader] = {}
_plugins_loaded = False
_plugins_lock = threading.RLock()


def _check_key(key: str, what: str) -> str:
    if not isinstance(key, str) or not key.strip() or key != key.strip():
        raise ValueError(f"{what} plugin name must be a non-empty string without surrounding spaces, not {key!r}")
    return key


def register_clip_backend(scheme: str) -> Callable[[L], L]:
    """Decorator: register ``loader(name, *, device, precision, memory_budget_mb, **options)``
    for CLIP names starting with ``scheme`` (when it ends in ``:``) or equal to it."""
    return _registrar(_CLIP_PLUGINS, scheme, "CLIP")


def register_captioner(name: str) -> Callable[[L], L]:
    """Decorator: register ``loader(name, *, device, precision, max_new_tokens, **options)``
    for the captioner ``name`` (or, ending in ``:``, every name with that prefix)."""
    return _registrar(_CAPTIONER_PLUGINS, name, "captioner")


def _registrar(table: dict[str, Any], key: str, what: str) -> Callable[[L], L]:
    """The decorator that puts a loader in ``table`` under ``key`` (a later one of the same key wins)."""
    _check_key(key, what)
    if key in _RESERVED_SCHEMES:
        raise ValueError(f"the {key!r} scheme is built in and cannot be taken by a plugin")

    def decorate(loader: L) -> L:
        if key in table and table[key] is not loader:
            log.debug("%s plugin %r registered again; the later loader wins", what, key)
        table[key] = loader
        return loader

    return decorate


def load_plugins() -> None:
    """Load the ``image2prompt.plugins`` entry points, once per process.

    Each names a module (imported: its decorators register loaders) or a callable
    (called with no arguments). A plugin that fails is logged as one warning and skipped.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    with _plugins_lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True  # first, so a plugin that looks names up does not recurse
        from importlib.metadata import entry_points

        try:
            eps = list(entry_points(group=PLUGIN_GROUP))
        except Exception as e:  # noqa: BLE001 - a broken installed distribution must not stop us
            log.warning("image2prompt plugins could not be listed: %s", one_line(e) or type(e).__name__)
            return
        seen: set[tuple[str, str]] = set()
        for ep in eps:
            if (ep.name, ep.value) in seen:  # the same distribution reachable twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, types.ModuleType):
                    obj()
            except Exception as e:  # noqa: BLE001 - a plugin's failure is its own, never ours
                log.warning("image2prompt plugin %r (%s) failed to load and is skipped: %s",
                            ep.name, ep.value, one_line(e) or type(e).__name__)


def _lookup(table: dict[str, Loader], name: str) -> tuple[str, Loader] | None:
    load_plugins()
    if name in table:
        return name, table[name]
    schemes = [k for k in table if k.endswith(":") and name.startswith(k)]
    if not schemes:
        return None
    key = max(schemes, key=len)
    return key, table[key]


def clip_plugin(name: str) -> Loader | None:
    """The plugin loader claiming CLIP model ``name``, or None."""
    found = _lookup(_CLIP_PLUGINS, name.strip())
    return found[1] if found else None


def captioner_plugin(name: str) -> Loader | None:
    """The plugin loader claiming captioner ``name``, or None."""
    found = _lookup(_CAPTIONER_PLUGINS, name.strip())
    return found[1] if found else None


def clip_plugin_names() -> list[str]:
    """Names and schemes registered by CLIP plugins."""
    load_plugins()
    return sorted(_CLIP_PLUGINS)


def captioner_plugin_names() -> list[str]:
    """Names and schemes registered by captioner plugins."""
    load_plugins()
    return sorted(_CAPTIONER_PLUGINS)


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


def expand_clip_names(names: list[str] | tuple[str, ...]) -> list[str]:
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
    if clip_plugin(name) is not None:
        return ClipSpec(name, "plugin", name)
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
    """open_clip's (arch, tag) pairs, or None when open_clip is not installed (no torch import)."""
    names = open_clip_names()
    if names is None:
        return None
    return {(a, t) for a, t in (n.split("/", 1) for n in names)}


def open_clip_names() -> list[str] | None:
    """open_clip's ARCH/TAG names, or None when open_clip is not installed.

    ``open_clip/__init__.py`` imports torch (seconds), so when open_clip is not loaded
    yet its table module is read on its own, with safetensors' torch half blocked.
    """
    if "open_clip" in sys.modules:
        return [f"{a}/{t}" for a, t in sys.modules["open_clip"].list_pretrained()]
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg_name = "_image2prompt_open_clip_table"
    blocked = "safetensors.torch"
    saved = {k: sys.modules[k] for k in (pkg_name,) if k in sys.modules}
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules[pkg_name] = pkg
    block = blocked not in sys.modules and "torch" not in sys.modules
    if block:
        sys.modules[blocked] = None  # type: ignore[assignment]  # makes `import safetensors.torch` fail
    try:
        table = importlib.import_module(f"{pkg_name}.pretrained")
        pairs = table.list_pretrained()
    except Exception:  # noqa: BLE001 - another open_clip layout: import it for real
        pairs = None
    finally:
        for k in [k for k in sys.modules if k == pkg_name or k.startswith(pkg_name + ".")]:
            del sys.modules[k]
        if block:
            sys.modules.pop(blocked, None)
        sys.modules.update(saved)
    if pairs is None:
        try:
            import open_clip
        except Exception:  # noqa: BLE001
            return None
        pairs = open_clip.list_pretrained()
    return [f"{a}/{t}" for a, t in pairs]


def parse_caption_name(name: str) -> CaptionSpec:
    """Parse a captioner name: a short name, ``local-dir:PATH``, a folder, ``hf:ORG/REPO``, or
    ``openai:MODEL`` (a VLM behind an OpenAI-compatible API; ``openai:`` alone: the server's first model)."""
    name = name.strip()
    if captioner_plugin(name) is not None:
        return CaptionSpec(name, "plugin", name)
    if name.startswith(REMOTE):  # the model served at the endpoint (empty: the server's first)
        model = name[len(REMOTE):].strip()
        return CaptionSpec(name, "remote", model)
    if name in VLM_PRESETS:
        preset = VLM_PRESETS[name]
        return CaptionSpec(name, "florence2" if preset.kind == "florence2" else "vlm", preset.repo)
    if name in CAPTION_MODELS:
        repo = CAPTION_MODELS[name]
        kind: CaptionKind = "git" if name.startswith("git-") else "blip2" if name.startswith("blip2-") else "blip"
        return CaptionSpec(name, kind, repo)
    if name.startswith(LOCAL_DIR) or os.path.isdir(name):
        raw = name[len(LOCAL_DIR):] if name.startswith(LOCAL_DIR) else name
        path = Path(raw).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{name}: {path} is not a transformers save_pretrained folder (no config.json)")
        return CaptionSpec(name, caption_kind(_read_json(path / "config.json"), name), str(path), path)
    if name.startswith(HF_TRANSFORMERS):
        repo = name[len(HF_TRANSFORMERS):]
        config = _cached_hub_config(repo)
        if config is not None:
            return CaptionSpec(name, caption_kind(config, name), repo)
        return CaptionSpec(name, _caption_kind_from_name(repo), repo)
    plugins = captioner_plugin_names()
    shown = ", ".join([*CAPTION_MODELS, *(p + ("..." if p.endswith(":") else "") for p in plugins)])
    raise ModelLoadError(
        f"unknown caption model {name!r}; choose one of: {shown}, "
        "'local-dir:PATH', 'hf:ORG/REPO', 'openai:MODEL' (a caption server), or 'none' with --caption TEXT"
    )


def caption_kind(config: dict, name: str) -> CaptionKind:
    """The captioner kind a transformers ``config.json`` (a dict) names, from its ``model_type``
    and ``architectures``; unsupported types raise ModelLoadError."""
    model_type = config.get("model_type")
    if model_type == "florence2":
        return "florence2"
    if model_type in VLM_MODEL_TYPES:
        return "vlm"
    table: dict[object, CaptionKind] = {"blip": "blip", "blip-2": "blip2", "blip_2": "blip2", "git": "git"}
    if model_type in table:
        return table[model_type]
    architectures = config.get("architectures")
    if _image_text_to_text(model_type, architectures if isinstance(architectures, list) else []):
        return "vlm"
    raise ModelLoadError(
        f"{name}: captioner model type {model_type!r} is not supported "
        "(blip, blip-2, git, florence2 or a vision-language chat model such as llava or qwen2_vl)"
    )


def _image_text_to_text(model_type: object, architectures: list) -> bool:
    """Whether transformers loads this model type or architecture as an image-text-to-text
    model (imported here, not at module level: this module stays free of torch)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as names
    except Exception:  # noqa: BLE001 - no (or another) transformers: only the static table counts
        return False
    skip = {"blip", "blip-2", "git", "vision-encoder-decoder"}
    if isinstance(model_type, str) and model_type in names and model_type not in skip:
        return True
    classes = {cls for key, cls in names.items() if key not in skip}
    return any(isinstance(a, str) and a in classes for a in architectures)


def _cached_hub_config(repo: str) -> dict | None:
    """The ``config.json`` of Hub repository ``repo`` when it is in the local Hub cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        path = try_to_load_from_cache(repo, "config.json")
    except Exception:  # noqa: BLE001 - a malformed repository id: let the loader say so
        return None
    if not isinstance(path, str):
        return None
    try:
        return _read_json(Path(path))
    except ModelLoadError:
        return None


def _caption_kind_from_name(repo: str) -> CaptionKind:
    """A guess from an ``hf:`` repository's name, for a config not cached yet (the loader reads
    the config itself and corrects it)."""
    lowered = repo.lower()
    if "florence-2" in lowered or "florence2" in lowered:
        return "florence2"
    if any(hint in lowered for hint in _VLM_NAME_HINTS):
        return "vlm"
    return "git" if "/git-" in lowered else "blip2" if "blip2" in lowered else "blip"
