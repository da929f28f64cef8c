"""The options several commands share, and what they mean before anything loads.

The search options' defaults (and, where the words suit a command line, their help) come
from :class:`~image2prompt.settings.SearchSettings`'s fields: they are defined once, there.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ..cache import EmbeddingCache
from ..catalogue import DEFAULT_CLIP, DEFAULT_TARGET
from ..errors import CaptionRequired, Image2PromptError, SettingsError
from ..io import DEFAULT_MAX_PIXELS
from ..models._registry import CAPTION_MODELS, TARGETS, expand_clip_names, resolve_target
from ..models.instructions import CAPTION_TYPES, DEFAULT_CAPTION_TYPE
from ..modes import beam_modes, list_modes, require_caption
from ..settings import SearchSettings, parse_floor
from .app import CAPTION_META, FatalError
from .progress import PROG

F = TypeVar("F", bound=Callable[..., Any])

#: SearchSettings' fields by name: the search options' defaults and help.
_FIELDS = {f.name: f for f in dataclasses.fields(SearchSettings)}


def setting_default(name: str) -> Any:
    """The default of the search setting ``name`` (a :class:`SearchSettings` field)."""
    return _FIELDS[name].default


def setting_help(name: str, more: str = "") -> str:
    """The help of the search setting ``name`` (its field's ``metadata["help"]``), then ``more``."""
    return str(_FIELDS[name].metadata["help"]) + more


def _stack(*options: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``options`` in the order they are listed (the order --help shows)."""
    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


# --- model options ----------------------------------------------------------------------


def _target_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        resolve_target(value)
    except Image2PromptError as err:
        raise click.BadParameter(str(err)) from None
    return value


def model_options(default_captioner_help: str) -> Callable[[F], F]:
    return _stack(
        click.option("--target", metavar="|".join(TARGETS), callback=_target_callback,
                     help="Stable Diffusion family to write for; picks the CLIP backbone its text "
                          f"encoder uses ({DEFAULT_TARGET} -> {TARGETS[DEFAULT_TARGET]}). "
                          f"Default: {DEFAULT_TARGET}."),
        click.option("--clip", "clip_name", metavar="NAME", multiple=True,
                     help="CLIP model: ARCH/TAG (e.g. ViT-L-14/openai), local-dir:PATH, hf-hub:ORG/REPO "
                          "or hf:ORG/REPO. Repeat it (or use the preset sdxl-dual) to score with several "
                          "models at once. Wins over --target. `image2prompt models` lists names."),
        click.option("--caption-model", metavar="NAME|none",
                     help=f"Captioner: {', '.join(CAPTION_MODELS)}, local-dir:PATH or hf:ORG/REPO (BLIP, GIT, "
                          "or a vision-language model: Llava/JoyCaption, Qwen2.5-VL, Gemma 3, SmolVLM, Florence-2), "
                          "openai:MODEL (a VLM behind an OpenAI-compatible API, see --caption-endpoint), or none "
                          f"(then give --caption). {default_captioner_help}"),
        click.option("--caption", metavar="TEXT", help="Use this caption for every input instead of generating one."),
        click.option("--vocab", multiple=True, type=click.Path(), metavar="PATH",
                     help="A folder of .txt lists replaces the vocabulary; a .txt file adds a category "
                          "named after the file. Repeatable."),
        click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
                     help="Where models run."),
        click.option("--precision", default="auto", show_default=True,
                     type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
                     help="Model weights precision (auto: fp16 on CUDA, fp32 elsewhere)."),
        click.option("--caption-precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
                     help="The captioner's precision (default: --precision's; auto: fp16 on CUDA, fp32 "
                          "elsewhere). On a CPU with AMX, bf16 captions about 2.5x faster while CLIP's "
                          "scores stay fp32; captions may differ from fp32's in a word."),
        click.option("--low-vram", is_flag=True,
                     help="Keep only one model on the GPU at a time (run also defaults to blip-base captions)."),
        click.option("--cache-dir", type=click.Path(), metavar="DIR", callback=cache_dir_callback,
                     help="Where vocabulary embeddings are cached (default: see `image2prompt cache info`)."),
        *caption_options,
    )


# --- what a VLM captioner is asked (local-dir:/hf: VLM folders, openai:MODEL) -------------------
def _keep(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value not in (None, ()):
        ctx.meta.setdefault(CAPTION_META, {})[param.name] = value
    return value


def _prompt_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--caption-prompt TEXT, or @FILE for the text of a file."""
    if value is not None and value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                value = f.read()
        except OSError as err:
            raise click.BadParameter(f"cannot read {value[1:]} ({err.strerror or err})") from None
    return _keep(ctx, param, value)


caption_options = (
    click.option("--caption-type", type=click.Choice(list(CAPTION_TYPES)), callback=_keep, expose_value=False,
                 help=f"VLM captioners: what to ask for (default {DEFAULT_CAPTION_TYPE}: one sentence that can start "
                      "a prompt)."),
    click.option("--caption-length", metavar="short|medium|long|N", callback=_keep, expose_value=False,
                 help="VLM captioners: how long a caption (N: words)."),
    click.option("--caption-extra", metavar="TEXT", multiple=True, callback=_keep, expose_value=False,
                 help="VLM captioners: one more instruction sentence. Repeatable."),
    click.option("--caption-name", metavar="NAME", callback=_keep, expose_value=False,
                 help="VLM captioners: what to call the person in the picture (a LoRA trigger word)."),
    click.option("--caption-prompt", metavar="TEXT|@FILE", callback=_prompt_text, expose_value=False,
                 help="VLM captioners: ask this instead ({name}, {length} and {words} are filled in). Part "
                      "of the fingerprint, like every caption option: changing it redoes a batch's images."),
    click.option("--caption-endpoint", metavar="URL", callback=_keep, expose_value=False,
                 help="With --caption-model openai:MODEL: the OpenAI-compatible API's base URL "
                      "(default $IMAGE2PROMPT_CAPTION_ENDPOINT, else http://127.0.0.1:8000/v1). The key is read "
                      "from $IMAGE2PROMPT_CAPTION_API_KEY or $OPENAI_API_KEY."),
    click.option("--caption-concurrency", type=click.IntRange(min=1), metavar="N", callback=_keep,
                 expose_value=False, help="With openai:MODEL: requests in flight at once (default 4)."),
    click.option("--caption-max-tokens", type=click.IntRange(min=1), metavar="N", callback=_keep,
                 expose_value=False, help="A caption's token limit (default 32 for BLIP, 96 for VLMs)."),
)



def cache_dir_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a cache folder that can never be created (a file is in its place) before any model
    loads, in one line; the default folder ($IMAGE2PROMPT_CACHE_DIR) is checked too."""
    from ..errors import CacheError

    try:
        EmbeddingCache(value, download=False).check()
    except CacheError as err:
        raise FatalError(str(err)) from None
    return value


verbosity_options = _stack(
    click.option("-q", "--quiet", is_flag=True, help="No progress bars and no warnings."),
    click.option("-v", "--verbose", is_flag=True, help="Log what is loaded and computed."),
    click.option("--debug", is_flag=True, help="Debug logging, and full tracebacks on errors."),
)


def pick_clip(clip_names: Sequence[str], target: str | None) -> list[str]:
    if clip_names and target:
        click.echo(f"{PROG}: warning: --clip {' '.join(clip_names)} overrides --target {target}", err=True)
    if clip_names:
        return expand_clip_names(list(clip_names))
    return [resolve_target(target) if target else DEFAULT_CLIP]


def pick_captioner(caption_model: str | None) -> str | None:
    """The captioner for Config: None for 'none', the name given, else "auto" (the library picks
    blip-large, or blip-base with --low-vram)."""
    if caption_model is None:
        return "auto"
    return None if caption_model.strip().lower() == "none" else caption_model


def pick_models(mode: str, beam: int, clip_names: Sequence[str], target: str | None, caption_model: str | None,
                caption: str | None, caption_column: str | None = None) -> tuple[list[str], str | None]:
    """The CLIP models and captioner of ``run`` and ``batch``, checked before anything loads: a usage error
    (:class:`~image2prompt.errors.CaptionRequired`'s words) when ``mode`` needs a caption and none can be
    had, a warning when ``mode`` ignores --beam. No captioner when there is nothing to caption."""
    clip = pick_clip(clip_names, target)
    captioner = pick_captioner(caption_model)
    try:
        require_caption(mode, has_caption=bool(caption or caption_column), has_captioner=captioner is not None)
    except CaptionRequired as err:
        raise click.UsageError(str(err)) from None
    if beam > 1 and mode not in beam_modes():
        logging.getLogger(f"{PROG}.cli").warning(
            "--beam %d is ignored: %s mode has no beam (only %s modes do)", beam, mode, " and ".join(beam_modes()))
    return clip, None if caption or mode == "negative" else captioner


# --- input options ----------------------------------------------------------------------


def max_pixels_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """--max-pixels N|none: a positive pixel count (64000000, 64_000_000 or 64,000,000), or none."""
    text = str(value if value is not None else DEFAULT_MAX_PIXELS).strip()
    if text.lower() == "none":
        return None
    try:
        limit = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise click.BadParameter(f"expected a positive number of pixels or none, got {value!r}")
    return limit


#: --max-pixels' help where it guards decoding (run, batch, analyze).
MAX_PIXELS_HELP = ("Refuse images with more than N pixels (width × height, read from the file's header before "
                   "decoding); none lifts the limit.")


def max_pixels_option(default: int = DEFAULT_MAX_PIXELS, text: str = MAX_PIXELS_HELP) -> Callable[[F], F]:
    """--max-pixels N|none with this default and help (serve has its own)."""
    return click.option("--max-pixels", metavar="N|none", default=str(default), show_default=True,
                        callback=max_pixels_callback, help=text)


#: --batch-size and --max-pixels, shared by ``run`` and ``batch``.
input_options = _stack(
    click.option("--batch-size", type=click.IntRange(min=1), metavar="N", default=16, show_default=True,
                 help="Images decoded ahead and sent through the captioner and CLIP together."),
    max_pixels_option(),
)


# --- search options ---------------------------------------------------------------------


class ModeChoice(click.Choice):
    """``--mode``: the registered modes, plugins' included, read when the option is used (a plugin
    registers its mode when its entry point loads, after this module is imported)."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(list_modes())

    @choices.setter
    def choices(self, value: Any) -> None:  # click's __init__ sets it; the registry is the source
        pass


def _flavors_callback(value: str) -> tuple[int, int]:
    """``MIN,MAX`` or ``MAX`` (then MIN is the default, capped at MAX)."""
    try:
        numbers = [int(p.strip().replace("_", "")) for p in str(value).split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not MIN,MAX or MAX (whole numbers)") from None
    if len(numbers) == 1:
        numbers = [min(setting_default("min_flavors"), numbers[0]), numbers[0]]
    if len(numbers) != 2 or min(numbers) < 0 or numbers[0] > numbers[1]:
        raise click.BadParameter(f"{value!r}: give MIN,MAX with 0 <= MIN <= MAX, e.g. 4,16")
    return numbers[0], numbers[1]


def _floor_callback(value: str) -> float | None:
    try:
        return parse_floor(value)
    except SettingsError as err:
        raise click.BadParameter(str(err)) from None


#: --memory-budget, of the commands that search (run, batch, serve).
memory_budget_option = click.option("--memory-budget", type=click.IntRange(min=16), metavar="MB",
                                    help="Activation memory for one text batch (default: 512 on CPU, 2048 on CUDA).")
_FLOOR = "off" if setting_default("floor") is None else f"{setting_default('floor'):g}"

#: The search options of ``run`` and ``batch``: --mode ... --memory-budget (one definition for both).
search_options = _stack(
    click.option("--mode", type=ModeChoice(), default=setting_default("mode"), show_default=True,
                 help=setting_help("mode")),
    click.option("--negative", "with_negative", is_flag=True, help=setting_help("negative")),
    click.option("--beam", type=click.IntRange(min=1), default=setting_default("beam"), show_default=True, metavar="N",
                 help="best/turbo: keep N prompts per search step (1 is the reference's greedy search); "
                      "the other modes have no beam and warn that they ignore it."),
    click.option("--max-tokens", type=click.IntRange(min=3), default=setting_default("max_tokens"),
                 show_default=True, metavar="N", help=setting_help("max_tokens")),
    click.option("--chunks", is_flag=True, help=setting_help("chunks")),
    click.option("--candidates", type=click.IntRange(min=1), default=setting_default("candidates"),
                 show_default=True, metavar="N", help=setting_help("candidates")),
    click.option("--flavors", callback=lambda c, p, v: _flavors_callback(v), show_default=True, metavar="MIN,MAX",
                 default=f"{setting_default('min_flavors')},{setting_default('max_flavors')}",
                 help="Phrases a search adds: at least MIN steps, at most MAX (fast mode adds MAX). Each step "
                      "of best mode scores every candidate, so MAX bounds its time; a single number sets MAX."),
    click.option("--floor", callback=lambda c, p, v: _floor_callback(v), default=_FLOOR, show_default=True, metavar="Z|off",
                 help=setting_help("floor", " Phrases it keeps out are listed in --format json.")),
    memory_budget_option,
)


def search_settings(*, mode: str, with_negative: bool, beam: int, max_tokens: int, chunks: bool, candidates: int,
                    flavors: tuple[int, int], floor: float | None, **more: Any) -> SearchSettings:
    """The :class:`SearchSettings` of the search options (``more``: other fields, e.g. ``score_prompt``)."""
    return SearchSettings(mode=mode, beam=beam, max_tokens=max_tokens, chunks=chunks, candidates=candidates,
                          min_flavors=flavors[0], max_flavors=flavors[1], floor=floor, negative=with_negative,
                          **more)
