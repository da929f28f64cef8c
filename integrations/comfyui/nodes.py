"""ComfyUI nodes over image2prompt's public API: Interrogate (prompts) and Analyze (top phrases).

Images arrive as ComfyUI's IMAGE, a ``[B,H,W,C]`` float tensor in [0, 1]; the library's
:class:`~image2prompt.runner.Runner` converts them exactly as it converts any array, so
a node's prompts are the library's prompts for the same pixels. Models load once per
set of load-time inputs and stay loaded between runs while ``keep_loaded`` is on (one
set at a time: asking for another frees the first). ComfyUI's ``comfy`` package is
imported lazily and only where it exists, so the nodes also run outside ComfyUI.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from image2prompt import Image2PromptError, SearchSettings
from image2prompt.catalogue import DEFAULT_CAPTIONER, DEFAULT_MODE, DEFAULT_TARGET, list_captioners, list_targets
from image2prompt.errors import SettingsError, one_line
from image2prompt.io import load_image
from image2prompt.models import parse_caption_name, parse_clip_name
from image2prompt.models.instructions import CAPTION_TYPES, DEFAULT_CAPTION_TYPE, build_instruction
from image2prompt.modes import list_modes, require_caption
from image2prompt.render import format_analysis
from image2prompt.runner import Runner
from image2prompt.settings import DEFAULT_FLOOR, parse_floor

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from image2prompt import Analysis, Interrogator, Result

T = TypeVar("T")
InputTypes = dict[str, dict[str, tuple[Any, ...]]]

CATEGORY = "image2prompt"
#: The choices and defaults, from the library's catalogue (and the search settings' own defaults).
TARGETS = {t.name: t.clip for t in list_targets()}
CAPTION_MODELS = [c.name for c in list_captioners(plugins=False)]
CLIP_CHOICES = [*TARGETS, "custom"]
_SEARCH = SearchSettings()
CAPTION_CHOICES = [*CAPTION_MODELS, "none", "custom"]
_CLIP_HELP = ", ".join(f"{k} = {v}" for k, v in TARGETS.items()) + "; custom: the custom_clip field"


# --- ComfyUI, where it is importable ------------------------------------------------------

def _comfy(name: str) -> Any | None:
    """``comfy.<name>`` when running inside ComfyUI, else None."""
    try:
        return importlib.import_module(f"comfy.{name}")
    except ImportError:
        return None


def host_device() -> str:
    """The device ComfyUI computes on, else the library's own choice ("auto")."""
    mm = _comfy("model_management")
    return str(mm.get_torch_device()) if mm is not None else "auto"


def _empty_cache() -> None:
    mm = _comfy("model_management")
    if mm is not None:
        mm.soft_empty_cache()
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_interrupt() -> None:
    """Stop between images when the user presses Cancel in ComfyUI."""
    mm = _comfy("model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def _progress(total: int) -> Callable[[], None]:
    utils = _comfy("utils")
    if utils is None:
        return lambda: None
    bar = utils.ProgressBar(total)
    return lambda: bar.update(1)


# --- models -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelKey:
    """The load-time inputs: equal keys share one loaded Interrogator."""

    clip: str
    captioner: str | None
    vocab: str
    cache_dir: str
    device: str
    caption_prompt: str | None = None  # what a VLM captioner is asked (None: its default)
    caption_endpoint: str | None = None  # openai:MODEL captioners: the API's base URL


class ModelCache:
    """At most one loaded Interrogator, kept between runs while ``keep_loaded`` is on."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._key: ModelKey | None = None
        self._loaded: Interrogator | None = None

    def __len__(self) -> int:
        return 0 if self._loaded is None else 1

    @property
    def current(self) -> Interrogator | None:
        return self._loaded

    def run(self, key: ModelKey, keep_loaded: bool, work: Callable[[Interrogator], T], *,
            any_captioner: bool = False) -> T:
        """``work`` on the Interrogator for ``key`` (loaded or reused); freed after unless ``keep_loaded``.
        ``any_captioner``: one loaded with a captioner serves a key without one (analysis)."""
        with self._lock:
            try:
                return work(self._get(key, any_captioner))
            except Image2PromptError as err:  # as the plain one-line exception ComfyUI shows in the node
                raise (ValueError if isinstance(err, ValueError) else RuntimeError)(one_line(err)) from None
            finally:
                if not keep_loaded:
                    self.clear()

    def clear(self) -> None:
        """Drop the loaded models and hand their memory back."""
        with self._lock:
            if self._loaded is None:
                return
            self._key = self._loaded = None
            gc.collect()
            _empty_cache()

    def _get(self, key: ModelKey, any_captioner: bool) -> Interrogator:
        held = self._key
        if self._loaded is not None and held is not None and (
                held == key or (any_captioner and key.captioner is None and replace(held, captioner=None) == key)):
            return self._loaded
        self.clear()  # one set of models in memory at a time
        self._loaded, self._key = _load(key), key
        return self._loaded


MODELS = ModelCache()


def _load(key: ModelKey) -> Interrogator:
    from image2prompt import Config, Interrogator

    config = Config(clip_model=key.clip, caption_model=key.captioner, device=key.device,
                    cache_dir=key.cache_dir or None, vocab=(key.vocab,) if key.vocab else (),
                    caption_prompt=key.caption_prompt, caption_endpoint=key.caption_endpoint)
    try:
        for name in config.clip_models:  # names and folders are checked before any weights load
            parse_clip_name(name)
        if config.captioner:
            parse_caption_name(config.captioner)
        return Interrogator.load(config)
    except Image2PromptError as err:
        raise RuntimeError(f"could not load the models: {one_line(err)}") from None


def _model_key(clip_model: str, custom_clip: str, caption_model: str, custom_caption_model: str,
               vocab: str, cache_dir: str, caption_type: str = "", caption_prompt: str = "",
               caption_endpoint: str = "") -> ModelKey:
    clip = _named("clip_model", clip_model, "custom_clip", custom_clip, TARGETS,
                  "ARCH/TAG, local-dir:PATH or hf-hub:ORG/REPO")
    captioner = _named("caption_model", caption_model, "custom_caption_model", custom_caption_model,
                       {**{n: n for n in CAPTION_MODELS}, "none": ""}, "local-dir:PATH, hf:ORG/REPO or openai:MODEL")
    question = None
    if caption_prompt.strip() or caption_type.strip() not in ("", DEFAULT_CAPTION_TYPE):
        question = build_instruction(caption_type.strip() or DEFAULT_CAPTION_TYPE,
                                     template=caption_prompt.strip() or None)
    return ModelKey(clip, captioner or None, vocab.strip(), cache_dir.strip(), host_device(), question,
                    caption_endpoint.strip() or None)


def _named(field: str, choice: str, custom_field: str, custom: str, known: dict[str, str], hint: str) -> str:
    """The model name a dropdown choice stands for ("custom": the name typed in ``custom_field``)."""
    if choice == "custom":
        if not custom.strip():
            raise ValueError(f"{field} is custom but {custom_field} is empty: name a model ({hint})")
        return custom.strip()
    if choice not in known:
        raise ValueError(f"unknown {field} {choice!r}; choose one of: {', '.join([*known, 'custom'])}")
    return known[choice]


# --- inputs -------------------------------------------------------------------------------

def _batch_size(image: Any) -> int:
    """B of a ``[B,H,W,C]`` IMAGE batch; anything else is a one-line ValueError."""
    shape = tuple(int(d) for d in getattr(image, "shape", ()))
    if len(shape) != 4 or shape[0] < 1 or shape[3] not in (1, 3, 4):
        got = "×".join(map(str, shape)) if shape else f"a {type(image).__name__}"
        raise ValueError(f"image must be a ComfyUI IMAGE, a [B,H,W,C] batch with B ≥ 1 and C = 3, got {got}")
    return shape[0]


def _input_hash(image: Any, settings: dict[str, Any]) -> str:
    """sha256 of every input: the image's pixels, shape and dtype when it is given, and the settings.

    ComfyUI calls IS_CHANGED with the widget values only (linked inputs such as the image are
    left out; its cache already keys on them), so the image is optional here."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    if hasattr(image, "shape"):
        h.update(f"|{tuple(image.shape)}|{image.dtype}|".encode())
        if hasattr(image, "detach"):  # a torch tensor (numpy has no bfloat16: hash those as float32)
            image = image.detach().cpu()
            image = (image.float() if str(image.dtype) == "torch.bfloat16" else image).numpy()
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def _images(image: Any, count: int) -> Iterator[Image.Image]:
    """The batch as RGB PIL images, converted as the Runner converts arrays."""
    for i in range(count):
        _check_interrupt()
        try:
            yield load_image(image[i])
        except Image2PromptError as err:
            reason = getattr(err, "reason", None) or one_line(err)
            raise ValueError(f"image {i + 1} of {count}: {reason}") from None


def _interrogate(ic: Interrogator, image: Any, count: int, settings: SearchSettings,
                 caption: str | None) -> list[Result]:
    require_caption(settings.mode, has_caption=caption is not None, has_captioner=ic.captioner is not None)
    results: list[Result] = []
    step = _progress(count)
    records = Runner(ic, settings, caption=caption, manage_devices=False).run(image)
    try:
        for record in records:
            if record.result is None:
                reason = (record.error or "no result").removeprefix(f"{record.source}: ")
                raise ValueError(f"image {record.index + 1} of {count}: {reason}")
            results.append(record.result)
            step()
            _check_interrupt()
    finally:  # closing the run stops its decode threads at once, after an error or a cancel too
        getattr(records, "close", lambda: None)()
    return results


# --- nodes --------------------------------------------------------------------------------

def _text(default: str = "", tooltip: str = "") -> tuple[str, dict[str, Any]]:
    return ("STRING", {"default": default, "multiline": False, "tooltip": tooltip})


def _floor(text: str) -> float | None:
    """The floor field: a number, ``off``, or empty for the library's default."""
    if not str(text).strip():
        return DEFAULT_FLOOR
    try:
        return parse_floor(text)
    except SettingsError as err:  # one line, as a plain ValueError like the node's other input errors
        raise ValueError(one_line(err)) from None


def _flag(default: bool, tooltip: str) -> tuple[str, dict[str, Any]]:
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


_MODEL_INPUTS: dict[str, tuple[Any, ...]] = {
    "custom_clip": _text(tooltip="With clip_model custom: ARCH/TAG, local-dir:PATH, hf-hub:ORG/REPO or sdxl-dual"),
    "keep_loaded": _flag(True, "Keep the models in memory for the next run (off: free them after this one)"),
    "vocab": _text(tooltip="A vocabulary folder of <category>.txt files, or one .txt list (empty: the default)"),
    "cache_dir": _text(tooltip="Where vocabulary embeddings are cached (empty: IMAGE2PROMPT_CACHE_DIR or the "
                               "user cache)"),
}


class Interrogate:
    """Prompts for every image of a batch, in the manner of CLIP Interrogator."""

    DESCRIPTION = ("Turns each image into a prompt scaffold: a caption plus the vocabulary phrases CLIP finds "
                   "closest. An approximation to refine, not the image's original prompt.")
    CATEGORY = CATEGORY
    FUNCTION = "interrogate"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("prompt", "negative_prompt", "caption")
    OUTPUT_IS_LIST = (True, True, True)

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image": ("IMAGE",),
                "mode": (list_modes(), {"default": DEFAULT_MODE}),  # plugins' modes included
                "clip_model": (CLIP_CHOICES, {"default": DEFAULT_TARGET, "tooltip": _CLIP_HELP}),
                "caption_model": (CAPTION_CHOICES, {"default": DEFAULT_CAPTIONER,
                                                    "tooltip": "none: use the caption field; custom: the "
                                                               "custom_caption_model field"}),
            },
            "optional": {
                "caption": _text(tooltip="Used for every image instead of a generated caption"),
                "max_tokens": ("INT", {"default": _SEARCH.max_tokens, "min": 3, "max": 1024, "step": 1,
                                       "tooltip": "Token budget of each prompt (77 = one CLIP window)"}),
                "negative": _flag(False, "Also build a negative prompt from the same features"),
                "floor": _text(f"{DEFAULT_FLOOR:g}", tooltip="Relevance floor: a phrase needs this much support "
                               "from the image on its own; off: the reference clip-interrogator's prompts"),
                "custom_caption_model": _text(tooltip="With caption_model custom: local-dir:PATH, hf:ORG/REPO, or "
                                                      "openai:MODEL (a VLM behind an OpenAI-compatible API)"),
                "caption_type": (list(CAPTION_TYPES), {"default": DEFAULT_CAPTION_TYPE,
                                                       "tooltip": "Vision-language captioners: what to ask for"}),
                "caption_prompt": _text(tooltip="Vision-language captioners: ask this instead ({name}, {length}, "
                                                "{words} filled in)"),
                "caption_endpoint": _text(tooltip="With openai:MODEL: the API's base URL (empty: "
                                                  "IMAGE2PROMPT_CAPTION_ENDPOINT or http://127.0.0.1:8000/v1); the "
                                                  "key comes from IMAGE2PROMPT_CAPTION_API_KEY"),
                **_MODEL_INPUTS,
            },
        }

    @classmethod
    def IS_CHANGED(cls, image: Any = None, **settings: Any) -> str:
        return _input_hash(image, settings)

    def interrogate(self, image: Any, mode: str, clip_model: str, caption_model: str, caption: str = "",
                    max_tokens: int = 77, negative: bool = False, custom_clip: str = "",
                    custom_caption_model: str = "", keep_loaded: bool = True, vocab: str = "",
                    cache_dir: str = "", floor: str = "", caption_type: str = "", caption_prompt: str = "",
                    caption_endpoint: str = "") -> dict[str, Any]:
        count = _batch_size(image)
        if mode not in list_modes():
            raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(list_modes())}")
        try:
            settings = SearchSettings(mode=mode, max_tokens=max_tokens, negative=negative, floor=_floor(floor))
        except ValueError as err:  # a SettingsError: one line, as a plain ValueError
            raise ValueError(one_line(err)) from None
        try:
            key = _model_key(clip_model, custom_clip, caption_model, custom_caption_model, vocab, cache_dir,
                             caption_type, caption_prompt, caption_endpoint)
        except SettingsError as err:
            raise ValueError(one_line(err)) from None
        given = caption.strip() or None
        results = MODELS.run(key, keep_loaded, lambda ic: _interrogate(ic, image, count, settings, given))
        prompts = [r.prompt for r in results]
        negatives = [r.negative.prompt if r.negative is not None else "" for r in results]
        captions = [r.caption or "" for r in results]
        shown = [p + (f"\n\nNegative prompt: {n}" if n else "") for p, n in zip(prompts, negatives)]
        return {"ui": {"text": shown}, "result": (prompts, negatives, captions)}


class Analyze:
    """The top phrases of every vocabulary category for each image, with their CLIP scores."""

    DESCRIPTION = ("Lists the closest phrases per category with CLIP scores. Artist names are hypotheses (the "
                   "image resembles work tagged with them); a weak match means no phrase stands out.")
    CATEGORY = CATEGORY
    FUNCTION = "analyze"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("analysis", "json")
    OUTPUT_IS_LIST = (True, True)

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {
            "required": {
                "image": ("IMAGE",),
                "clip_model": (CLIP_CHOICES, {"default": DEFAULT_TARGET, "tooltip": _CLIP_HELP}),
                "top_n": ("INT", {"default": 5, "min": 1, "max": 100, "step": 1,
                                  "tooltip": "Phrases shown per category"}),
            },
            "optional": {"caption": _text(tooltip="Shown with the analysis (no captioner runs here)"),
                         **_MODEL_INPUTS},
        }

    @classmethod
    def IS_CHANGED(cls, image: Any = None, **settings: Any) -> str:
        return _input_hash(image, settings)

    def analyze(self, image: Any, clip_model: str, top_n: int = 5, caption: str = "", custom_clip: str = "",
                keep_loaded: bool = True, vocab: str = "", cache_dir: str = "") -> dict[str, Any]:
        count = _batch_size(image)
        key = _model_key(clip_model, custom_clip, "none", "", vocab, cache_dir)
        given = caption.strip() or None

        def work(ic: Interrogator) -> list[Analysis]:
            return [ic.analyze(im, top_n, caption=given, source=f"image {i + 1} of {count}")
                    for i, im in enumerate(_images(image, count))]

        analyses = MODELS.run(key, keep_loaded, work, any_captioner=True)
        texts = [format_analysis(a) for a in analyses]
        return {"ui": {"text": texts},
                "result": (texts, [a.to_json(indent=2) for a in analyses])}


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "Image2Prompt|Interrogate": Interrogate,
    "Image2Prompt|Analyze": Analyze,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "Image2Prompt|Interrogate": "Image2Prompt: Interrogate",
    "Image2Prompt|Analyze": "Image2Prompt: Analyze",
}
