"""The ``image2prompt`` command line.

Only the standard library, click, PIL and numpy are imported up front; torch,
open_clip and transformers load when a model does, so ``--help``, ``models``
and ``cache info`` stay fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .. import __version__
from ..batch.engine import failure_manifest_path
from ..batch.records import FORMATS as RECORD_FORMATS
from ..batch.records import OutputError, format_for
from ..batch.sidecars import ON_EXISTING
from ..cache import EmbeddingCache
from ..errors import RAISE_MAX_PIXELS, Image2PromptError, ImageLoadError, SettingsError, one_line
from ..io import DEFAULT_MAX_PIXELS, ImageSource, expand_sources, load_image
from ..io.sources import is_url
from ..models._registry import (
    CAPTION_MODELS,
    CLIP_PRESETS,
    DEFAULT_CLIP,
    TARGET_ALIASES,
    TARGETS,
    expand_clip_names,
    open_clip_names,
    resolve_target,
)
from ..modes import beam_modes, caption_free_modes, get_mode, list_modes
from ..render import FORMATS, format_analysis, make_writer, shows_similarity
from ..runner import Runner
from ..settings import SearchSettings, parse_floor
from .progress import PROG, Reporter, progress_enabled, setup_logging, table_progress

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Config, Interrogator

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_COMMAND = "run"
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# --- errors -----------------------------------------------------------------------


class FatalError(click.ClickException):
    """A model, vocabulary or configuration problem: one line on stderr, exit status 1."""

    exit_code = 1

    def format_message(self) -> str:
        return cli_words(self.message)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"{PROG}: error: {self.format_message()}", err=True, file=file)


class UsageLine(FatalError):
    """A usage error said in one line (an option's value that cannot work), exit status 2."""

    exit_code = 2


#: The library's front-end-neutral words for a setting -> the option that sets it here.
_CLI_WORDS = {RAISE_MAX_PIXELS: "raise it with --max-pixels N, or --max-pixels none"}


def cli_words(message: str) -> str:
    """A library message in the command line's words: where it says how to change a setting,
    it names the option (``--max-pixels``)."""
    for neutral, ours in _CLI_WORDS.items():
        message = message.replace(neutral, ours)
    return message


@contextmanager
def fatal_errors(debug: bool, *types_: type[BaseException]) -> Iterator[None]:
    """Turn library errors into :class:`FatalError`; ``--debug`` keeps the traceback."""
    caught: tuple[type[BaseException], ...] = (Image2PromptError, *types_)
    try:
        yield
    except caught as err:
        if debug:
            raise
        raise FatalError(str(err)) from None


# --- the default-command group -------------------------------------------------------

#: ``ctx.meta`` key: DefaultGroup put the default command's name in front of the arguments.
_DEFAULT_INSERTED = "image2prompt.default_command_inserted"


class _ImplicitCommandUsageError(click.UsageError):
    """A usage error of the default command, shown as the group's usage (``image2prompt [OPTIONS]
    PATH_OR_URL...`` and ``Try 'image2prompt -h'``): the user never typed the command's name."""

    def __init__(self, original: click.UsageError, group_ctx: click.Context) -> None:
        super().__init__(original.format_message(), original.ctx)
        self.original = original
        self.group_ctx = group_ctx
        self.exit_code = original.exit_code  # type: ignore[misc]  # click reads it off the instance

    def format_message(self) -> str:
        return self.original.format_message()

    def show(self, file: IO[Any] | None = None) -> None:
        sub = self.ctx
        assert sub is not None
        prog = self.group_ctx.command_path
        formatter = sub.make_formatter()
        formatter.write_usage(prog, " ".join(sub.command.collect_usage_pieces(sub)))
        lines = [formatter.getvalue().rstrip("\n")]
        help_names = self.group_ctx.help_option_names
        if help_names:
            lines.append(f"Try '{prog} {min(help_names, key=len)}' for help.")
        lines += ["", f"Error: {self.format_message()}"]
        click.echo("\n".join(lines), file=file, err=file is None, color=sub.color)


class DefaultGroup(click.Group):
    """A group that sends its arguments to a default command when they do not start with a
    command name, so ``image2prompt photo.jpg`` means ``image2prompt run photo.jpg``."""

    def __init__(self, *args: Any, default_command: str = DEFAULT_COMMAND, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def _own_options(self, ctx: click.Context) -> set[str]:
        names: set[str] = set()
        for param in self.get_params(ctx):
            names.update(param.opts)
            names.update(param.secondary_opts)
        return names

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in self._own_options(ctx):
            args = [self.default_command, *args]
            ctx.meta[_DEFAULT_INSERTED] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """A usage error of a default command the user did not type shows the usage they wrote
        (``image2prompt [OPTIONS] PATH_OR_URL...``), not ``image2prompt run ...``."""
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            sub = err.ctx
            if (not ctx.meta.get(_DEFAULT_INSERTED) or sub is None or sub.parent is not ctx
                    or sub.command is not self.commands.get(self.default_command)):
                raise
            raise _ImplicitCommandUsageError(err, ctx) from None

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Usage of both forms, the group's text, the default command's options, the commands."""
        default = self.commands[self.default_command]
        default_ctx = click.Context(default, info_name=ctx.info_name, parent=None,
                                    help_option_names=ctx.help_option_names)
        formatter.write_usage(ctx.command_path, " ".join(default.collect_usage_pieces(default_ctx)))
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="   or: ")
        self.format_help_text(ctx, formatter)
        records = [rv for p in default.get_params(default_ctx)
                   if isinstance(p, click.Option) and (rv := p.get_help_record(default_ctx))]
        records += [rv for p in self.get_params(ctx)
                    if isinstance(p, click.Option) and not set(p.opts) & set(ctx.help_option_names)
                    and (rv := p.get_help_record(ctx))]
        with formatter.section("Options"):
            formatter.write_dl(records)
        self.format_commands(ctx, formatter)
        self.format_epilog(ctx, formatter)


@click.group(PROG, cls=DefaultGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """Turn an image into a Stable Diffusion prompt scaffold, CLIP-Interrogator style.

    A caption model describes the image; CLIP then ranks phrases from a vocabulary
    (mediums, artists, movements, style flavors) by similarity to it. The output is a
    scaffold to refine, not the prompt that made the image: many prompts give the same
    picture, and a high-scoring artist name means the image resembles work tagged with
    that name, not that the artist made it.

    Without a command name the arguments go to `run` (the options below):

    \b
      image2prompt photo.jpg
      image2prompt photos/ --mode fast --format jsonl --output prompts.jsonl
      image2prompt https://example.com/cat.png --target sdxl
      image2prompt photo.jpg --caption-model none --caption "a red fox in snow"

    Weights download on first use and are cached (see `image2prompt cache info`).
    To pass a file named like a command, write `image2prompt run FILE` or `./FILE`.
    """


# --- shared options ---------------------------------------------------------------------


def _target_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        resolve_target(value)
    except Image2PromptError as err:
        raise click.BadParameter(str(err)) from None
    return value


def model_options(default_captioner_help: str) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        for option in reversed([
            click.option("--target", metavar="|".join(TARGETS), callback=_target_callback,
                         help="Stable Diffusion family to write for; picks the CLIP backbone its text "
                              f"encoder uses (sd15 -> {TARGETS['sd15']}). Default: sd15."),
            click.option("--clip", "clip_name", metavar="NAME", multiple=True,
                         help="CLIP model: ARCH/TAG (e.g. ViT-L-14/openai), local-dir:PATH, hf-hub:ORG/REPO "
                              "or hf:ORG/REPO. Repeat it (or use the preset sdxl-dual) to score with several "
                              "models at once. Wins over --target. `image2prompt models` lists names."),
            click.option("--caption-model", metavar="NAME|none",
                         help=f"Captioner: {', '.join(CAPTION_MODELS)}, local-dir:PATH, hf:ORG/REPO, or none "
                              f"(then give --caption). {default_captioner_help}"),
            click.option("--caption", metavar="TEXT",
                         help="Use this caption for every input instead of generating one."),
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
            click.option("--cache-dir", type=click.Path(), metavar="DIR", callback=_cache_dir_callback,
                         help="Where vocabulary embeddings are cached (default: see `image2prompt cache info`)."),
        ]):
            f = option(f)
        return f

    return decorate


def _cache_dir_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a cache folder that can never be created (a file is in its place) before any model
    loads, in one line; the default folder ($IMAGE2PROMPT_CACHE_DIR) is checked too."""
    from ..errors import CacheError

    try:
        EmbeddingCache(value, download=False).check()
    except CacheError as err:
        raise FatalError(str(err)) from None
    return value


def verbosity_options(f: F) -> F:
    for option in reversed([
        click.option("-q", "--quiet", is_flag=True, help="No progress bars and no warnings."),
        click.option("-v", "--verbose", is_flag=True, help="Log what is loaded and computed."),
        click.option("--debug", is_flag=True, help="Debug logging, and full tracebacks on errors."),
    ]):
        f = option(f)
    return f


def pick_clip(clip_names: Sequence[str], target: str | None) -> list[str]:
    if clip_names and target:
        click.echo(f"{PROG}: warning: --clip {' '.join(clip_names)} overrides --target {target}", err=True)
    if clip_names:
        return expand_clip_names(list(clip_names))
    return [resolve_target(target) if target else DEFAULT_CLIP]


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


def pick_captioner(caption_model: str | None) -> str | None:
    """The captioner for Config: None for 'none', the name given, else "auto" (the library picks
    blip-large, or blip-base with --low-vram)."""
    if caption_model is None:
        return "auto"
    if caption_model.strip().lower() == "none":
        return None
    return caption_model


def model_config(*, clip: Sequence[str], captioner: str | None, device: str, precision: str,
                 caption_precision: str | None, cache_dir: str | None, vocab: Sequence[str], low_vram: bool,
                 memory_budget_mb: int | None = None, batch_size: int | None = None) -> Config:
    """The load-time ``Config`` from the model options the commands share. ``batch_size``
    (``--batch-size``, where a command has it) is also the captioner's and the image tower's."""
    from ..interrogator import Config

    config = Config(clip_model=list(clip), caption_model=captioner, device=device, precision=precision,
                    caption_precision=caption_precision, cache_dir=cache_dir, vocab=tuple(vocab),
                    low_vram=low_vram, memory_budget_mb=memory_budget_mb)
    if batch_size is not None:
        config = dataclasses.replace(config, caption_batch_size=batch_size, image_batch_size=batch_size)
    return config


def load_interrogator(config: Config, *, show_progress: bool, debug: bool,
                      say: Callable[[str], None] | None = None) -> Interrogator:
    """Load the models (the only place torch gets imported), from load-time settings only."""
    with fatal_errors(debug, ValueError):
        from ..interrogator import Interrogator

        if show_progress:
            name = config.captioner
            clips = [config.clip_model] if isinstance(config.clip_model, str) else list(config.clip_model)
            what = " + ".join(clips) + (f" and {name}" if name else "")
            (say or (lambda m: click.echo(m, err=True)))(f"{PROG}: loading {what}...")
        else:
            _quiet_library_progress()
        return Interrogator.load(config, progress=table_progress(show_progress))


def _quiet_library_progress() -> None:
    """Silence the download and weight-loading bars of huggingface_hub and transformers
    (logs and pipes get no carriage-return noise; --quiet means quiet)."""
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    if "transformers" in sys.modules:  # it read the hub's setting when it was imported
        try:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
        except AttributeError:  # pragma: no cover
            pass


# --- run (the default command) ----------------------------------------------------------


def _max_pixels_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
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


def _flavors_callback(value: str) -> tuple[int, int]:
    """``MIN,MAX`` or ``MAX`` (then MIN is the default 8, capped at MAX)."""
    parts = [p.strip() for p in str(value).split(",")]
    try:
        numbers = [int(p.replace("_", "")) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not MIN,MAX or MAX (whole numbers)") from None
    if len(numbers) == 1:
        numbers = [min(8, numbers[0]), numbers[0]]
    if len(numbers) != 2 or min(numbers) < 0 or numbers[0] > numbers[1]:
        raise click.BadParameter(f"{value!r}: give MIN,MAX with 0 <= MIN <= MAX, e.g. 4,16")
    return numbers[0], numbers[1]


def _floor_default() -> str:
    floor = SearchSettings().floor
    return "off" if floor is None else f"{floor:g}"


def _floor_callback(value: str) -> float | None:
    try:
        return parse_floor(value)
    except SettingsError as err:
        raise click.BadParameter(str(err)) from None


def check_caption(mode: str, captioner: str | None, caption: str | None) -> None:
    """A usage error when ``mode`` needs a caption and none can be had: no captioner, no --caption.
    It names every mode that needs none (from the mode registry)."""
    if captioner is None and not caption and get_mode(mode).needs_caption(False):
        others = " or ".join(f"--mode {m}" for m in caption_free_modes())  # every one --mode takes
        hint = f" (or use {others})" if others else ""
        raise click.UsageError(f"--caption-model none needs --caption TEXT{hint}")


def warn_unused_beam(mode: str, beam: int) -> None:
    """One warning when --beam is given to a mode whose search does not read it."""
    if beam > 1 and mode not in beam_modes():
        logging.getLogger(f"{PROG}.cli").warning(
            "--beam %d is ignored: %s mode has no beam (only %s modes do)", beam, mode, " and ".join(beam_modes()))


def search_options(f: F) -> F:
    """The search options of ``run`` and ``batch``: --mode ... --memory-budget (one definition for both)."""
    for option in reversed([
        click.option("--mode", type=ModeChoice(), default="best", show_default=True,
                     help="best: greedy search for the highest-scoring prompt (slowest); turbo: the same search, "
                          "done lazily on a shortlist of phrases at each step (several times faster); classic: caption, "
                          "medium, artist, site, movement and 3 flavors; fast: caption and the top phrases; "
                          "negative: phrases least like the image, for a negative prompt; style: only the "
                          "aesthetic (lighting, colour, medium, technique...), no caption or subject."),
        click.option("--negative", "with_negative", is_flag=True,
                     help="Also write the paired negative prompt, from the same image features."),
        click.option("--beam", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
                     help="best/turbo: keep N prompts per search step (1 is the reference's greedy search); "
                          "the other modes have no beam and warn that they ignore it."),
        click.option("--max-tokens", type=click.IntRange(min=3), default=77, show_default=True, metavar="N",
                     help="Token budget of the prompt, start and end tokens included; no mode goes over it, and a "
                          "caption over it is cut at a word. Past 77, CLIP cannot score additions: the rest is "
                          "filled in order of the phrases' own scores."),
        click.option("--chunks", is_flag=True,
                     help="Split long prompts into 75-token chunks joined with BREAK (A1111/ComfyUI style)."),
        click.option("--candidates", type=click.IntRange(min=1), default=2048, show_default=True, metavar="N",
                     help="best, negative and style: how many of the best-scoring phrases the search tries "
                          "(turbo: at most 1024). Every search step scores each one, so best mode's time "
                          "grows about in proportion: 512 is about 4x faster on a CPU and finds slightly weaker prompts."),
        click.option("--flavors", "flavors", callback=lambda c, p, v: _flavors_callback(v), default="8,32",
                     show_default=True, metavar="MIN,MAX",
                     help="Phrases a search adds: at least MIN steps, at most MAX (fast mode adds MAX). Each step "
                          "of best mode scores every candidate, so MAX bounds its time; a single number sets MAX."),
        click.option("--floor", callback=lambda c, p, v: _floor_callback(v), default=_floor_default(),
                     show_default=True, metavar="Z|off",
                     help="Relevance floor: a phrase enters the prompt only if the image supports it on its own: "
                          "its score stands Z above its category's median for this image, in standard deviations "
                          "of the image's scores over the whole vocabulary (negative mode: below). off: the "
                          "reference's behaviour, for parity. Phrases it keeps out are listed in --format json."),
        click.option("--memory-budget", type=click.IntRange(min=16), metavar="MB",
                     help="Activation memory for one text batch (default: 512 on CPU, 2048 on CUDA)."),
    ]):
        f = option(f)
    return f


def input_options(f: F) -> F:
    """--batch-size and --max-pixels, shared by ``run`` and ``batch``."""
    for option in reversed([
        click.option("--batch-size", type=click.IntRange(min=1), metavar="N", default=16, show_default=True,
                     help="Images decoded ahead and sent through the captioner and CLIP together."),
        click.option("--max-pixels", metavar="N|none", default=str(DEFAULT_MAX_PIXELS), show_default=True,
                     callback=_max_pixels_callback,
                     help="Refuse images with more than N pixels (width × height, read from the file's header "
                          "before decoding); none lifts the limit."),
    ]):
        f = option(f)
    return f


@cli.command(DEFAULT_COMMAND, context_settings=CONTEXT_SETTINGS,
             short_help="Write a prompt scaffold for each image (the default command).")
@click.argument("inputs", nargs=-1, required=True, metavar="PATH_OR_URL...")
@search_options
@model_options("Default: blip-large (blip-base with --low-vram).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="text: the prompt; weighted: the same with A1111 emphasis (phrase:1.15) from the scores "
                   "(a literal ( ) [ ] or \\ escaped with a backslash, as A1111 reads it); "
                   "json: full results with every phrase's "
                   "score and the prompt's similarity; jsonl: one result per line; csv: one row per result. "
                   "One file or URL on the command line gives the prompt alone (json: one object); folders, "
                   "globs and several inputs give SOURCE<TAB>PROMPT lines (json: an array of the results, [] "
                   "if none). Failed inputs are reported on stderr only. Default: from -o FILE's extension "
                   "(.json, .jsonl, .ndjson, .csv), else text. (fast and classic score the final prompt only "
                   "for json, jsonl and csv.)")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write results to FILE instead of stdout (written as they are produced); its extension "
                   "sets the format unless --format does.")
@input_options
@verbosity_options
def run(inputs: tuple[str, ...], mode: str, with_negative: bool, beam: int, max_tokens: int, chunks: bool,
        candidates: int, flavors: tuple[int, int], floor: float | None, memory_budget: int | None, target: str | None,
        clip_name: tuple[str, ...], caption_model: str | None, caption: str | None, vocab: tuple[str, ...], device: str,
        precision: str, caption_precision: str | None, low_vram: bool, cache_dir: str | None, fmt: str | None,
        output: str | None,
        batch_size: int, max_pixels: int | None, quiet: bool, verbose: bool, debug: bool) -> None:
    """Write a prompt scaffold for each image: a starting point to edit, not a recovered prompt.

    PATH_OR_URL may be image files, folders (searched recursively for every image
    format the installed Pillow can open), glob patterns or http(s) URLs. A bad input is
    reported on stderr and the others carry on; the exit status is 1 if any failed.

    Each result keeps the caption, the CLIP similarity of the prompt to the image and
    every phrase with its score (see --format json), so you can judge what to keep.
    Artist names are hypotheses: the image resembles work tagged with that name.
    """
    setup_logging(verbose, debug, quiet)
    fmt = run_format(fmt, output)
    clip = pick_clip(clip_name, target)
    captioner = pick_captioner(caption_model)
    check_caption(mode, captioner, caption)
    warn_unused_beam(mode, beam)
    if caption or mode == "negative":
        captioner = None  # nothing to caption: do not load a captioner at all
    with fatal_errors(debug):
        # text and weighted output do not show the prompt's similarity, so fast and classic
        # skip the one text encode per image that computes it
        settings = SearchSettings(mode=mode, beam=beam, max_tokens=max_tokens, chunks=chunks,
                                  candidates=candidates, min_flavors=flavors[0], max_flavors=flavors[1],
                                  floor=floor, negative=with_negative, score_prompt=shows_similarity(fmt))
    items = list(expand_sources(inputs))
    show_progress = progress_enabled(quiet)
    with _open_output(output, fmt) as stream:
        writer = make_writer(fmt, stream, single=names_one_image(inputs))
        reporter = Reporter(len(items), show_progress)

        def load() -> Interrogator:  # called by the runner once the first image has decoded
            config = model_config(clip=clip, captioner=captioner, device=device, precision=precision,
                                  caption_precision=caption_precision, cache_dir=cache_dir, vocab=vocab,
                                  low_vram=low_vram, memory_budget_mb=memory_budget, batch_size=batch_size)
            return load_interrogator(config, show_progress=show_progress, debug=debug, say=reporter.say)

        failures = 0
        try:
            for record in Runner(load, settings, batch_size=batch_size, caption=caption,
                                 max_pixels=max_pixels).run(items):
                if record.result is not None:
                    writer.write(record.result)
                else:
                    reporter.error(cli_words(record.error or f"{record.source}: failed"))
                    failures += 1
                reporter.advance()
        except Image2PromptError as err:
            # A model, vocabulary or cache problem: every later batch would fail the same way.
            if debug:
                raise
            raise FatalError(f"stopping: {one_line(err) or type(err).__name__}") from None
        finally:
            writer.close()
            reporter.close()
    if failures:
        click.get_current_context().exit(1)


#: ``run -o FILE`` without --format: the format FILE's extension names (any other extension: text).
RUN_EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "text"}


def run_format(fmt: str | None, output: str | None) -> str:
    """--format if given, else the one -o FILE's extension names, else text (as `batch` picks its format)."""
    if fmt is not None:
        return fmt
    if output is None:
        return "text"
    ext = Path(output).suffix.lower()
    if ext == ".parquet":
        raise UsageLine(f"{output}: run writes text, weighted, json, jsonl or csv; write Parquet with "
                        "`image2prompt batch`")
    return RUN_EXTENSIONS.get(ext, "text")


def names_one_image(inputs: Sequence[str]) -> bool:
    """True when the command line names one image: one argument, a file (or a missing path) or a URL,
    not a folder or a glob. The output's shape follows it, never what a folder holds: the prompt
    alone and one JSON object for one image, else SOURCE<TAB>PROMPT lines and a JSON array."""
    if len(inputs) != 1:
        return False
    raw = inputs[0]
    if is_url(raw):
        return True
    path = os.path.expanduser(raw)
    if os.path.isdir(path):
        return False
    return os.path.exists(path) or not any(ch in raw for ch in "*?[")


@contextmanager
def _open_output(path: str | None, fmt: str) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    try:
        stream = open(path, "w", encoding="utf-8", newline="" if fmt == "csv" else None)
    except OSError as err:
        raise FatalError(f"{path}: cannot write output ({err.strerror or err})") from None
    with stream:
        yield stream


# --- batch ----------------------------------------------------------------------------

_SIDECAR_EXT = re.compile(r"^\.?[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")
_PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


def _sidecar_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    if not _SIDECAR_EXT.match(value):
        raise click.BadParameter(f"{value!r} is not a file extension such as .txt or .caption "
                                 "(give --sidecar after the inputs, or with its extension)")
    return value if value.startswith(".") else "." + value


#: Search settings -> the option that sets them and its parameters (for --retry-failed's check).
_RETRY_SETTINGS = {"mode": ("--mode", ("mode",)), "negative": ("--negative", ("with_negative",)),
                   "beam": ("--beam", ("beam",)), "max_tokens": ("--max-tokens", ("max_tokens",)),
                   "chunks": ("--chunks", ("chunks",)), "candidates": ("--candidates", ("candidates",)),
                   "min_flavors": ("--flavors", ("flavors",)), "max_flavors": ("--flavors", ("flavors",)),
                   "floor": ("--floor", ("floor",))}


def _given(*params: str) -> bool:
    """True when one of these parameters of the current command was given (not its default)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return any(ctx.get_parameter_source(p) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
               for p in params)


def _shown(option: str, value: Any, settings: SearchSettings | None = None) -> str:
    if option == "--flavors" and settings is not None:
        return f"--flavors {settings.min_flavors},{settings.max_flavors}"
    if isinstance(value, bool):
        return option if value else f"no {option}"
    if value is None:
        return f"{option} off" if option == "--floor" else f"no {option}"
    if isinstance(value, (list, tuple)):
        return f"{option} {' '.join(str(v) for v in value)}" if value else f"no {option}"
    return f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}"


def _retry_outputs(run: dict[str, Any]) -> dict[str, Any]:
    """The output options of a kept run that this command was not given (given ones win)."""
    kept: dict[str, Any] = run["outputs"] if isinstance(run.get("outputs"), dict) else {}
    side: dict[str, Any] | None = kept["sidecar"] if isinstance(kept.get("sidecar"), dict) else None
    out: dict[str, Any] = {}
    if side is not None and not _given("sidecar", "on_existing", "prefix", "suffix", "dedupe"):
        out.update(sidecar=side.get("ext"), on_existing=side.get("on_existing", "skip"), prefix=side.get("prefix"),
                   suffix=side.get("suffix"), dedupe=bool(side.get("dedupe")))
    for key in ("store_features", "store_scores"):
        if kept.get(key) is not None and not _given(key):
            out[key] = kept[key]
    return out


def _retry_as_run(output: str, settings: SearchSettings, clip: list[str], captioner: str | None,
                  vocab: Sequence[str], caption: str | None, low_vram: bool = False
                  ) -> tuple[SearchSettings, list[str], str | None, tuple[str, ...], str | None, dict[str, Any]]:
    """--retry-failed: the settings and models of the run that failed (kept in FILE.failed.json),
    not this command's defaults, and its output options (caption files, stored features and
    scores) unless given. A search or model option given here that says otherwise is refused, in
    one line; without a kept run (an earlier version's list) the command's own settings are used,
    and the engine refuses them if no failed input ran with them."""
    from ..batch.retry import normalise_clip, read_run

    run = read_run(output)
    if run is None:
        return settings, clip, captioner, tuple(vocab), caption, {}
    try:
        stored = SearchSettings.from_dict(run["settings"])
    except (SettingsError, TypeError) as err:
        raise FatalError(f"--retry-failed: cannot use the settings kept in {output}.failed.json "
                         f"({one_line(err)}); retry with the options of that run, without --retry-failed") from None
    differences: list[str] = []
    for field, (option, params) in _RETRY_SETTINGS.items():
        ours, theirs = getattr(settings, field), getattr(stored, field)
        if ours != theirs and _given(*params):
            entry = (f"{_shown(option, theirs, stored)}, not {_shown(option, ours, settings)}")
            if entry not in differences:
                differences.append(entry)
    stored_clip = [str(c) for c in run.get("clip") or []]
    if _given("clip_name", "target") and [normalise_clip(c) for c in clip] != stored_clip:
        differences.append(f"{_shown('--clip', stored_clip)}, not {_shown('--clip', clip)}")
    stored_captioner = run.get("captioner")
    from ..interrogator import Config

    resolved = Config(caption_model=captioner, low_vram=low_vram).captioner  # "auto" is the model it picks
    if _given("caption_model", "caption") and resolved != stored_captioner:
        differences.append(f"{_shown('--caption-model', stored_captioner or 'none')}, "
                           f"not {_shown('--caption-model', captioner or 'none')}")
    stored_caption = run.get("caption")
    if _given("caption") and caption != stored_caption:
        differences.append(f"{_shown('--caption', stored_caption)}, not {_shown('--caption', caption)}")
    stored_vocab = [str(v) for v in run.get("vocab") or []]
    if _given("vocab") and [os.path.abspath(os.path.expanduser(v)) for v in vocab] != stored_vocab:
        differences.append(f"{_shown('--vocab', stored_vocab)}, not {_shown('--vocab', list(vocab))}")
    if differences:
        raise FatalError(f"--retry-failed: the failed inputs of {output} ran with {'; '.join(differences)}; "
                         "leave those options out to retry them as they ran")
    return stored, stored_clip, stored_captioner, tuple(stored_vocab), stored_caption, _retry_outputs(run)


class _BatchProgress:
    """A tqdm bar on a terminal; otherwise a plain line every 30 seconds (nothing with --quiet)."""

    def __init__(self, inputs: Sequence[str], allow_urls: bool, column: str | None, bar: bool,
                 quiet: bool) -> None:
        self.bar: Any = None
        self.quiet = quiet
        self.shown = 0
        self.last = time.monotonic()
        if bar:
            import threading

            from tqdm import tqdm

            self.bar = tqdm(desc="Images", unit="img", file=sys.stderr, dynamic_ncols=True)
            # the total is counted in the background (a listing, no image read): the ETA appears when known
            threading.Thread(target=self._count, args=(inputs, allow_urls, column), daemon=True).start()

    def _count(self, inputs: Sequence[str], allow_urls: bool, column: str | None) -> None:
        from ..batch.inputs import iter_inputs

        try:
            total = sum(1 for _ in iter_inputs(inputs, allow_urls=allow_urls, column=column))
        except Exception:  # noqa: BLE001 - the count is only for the ETA
            return
        bar = self.bar
        if bar is not None:
            bar.total = total
            bar.refresh()

    def say(self, line: str) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def __call__(self, stats: Any) -> None:
        finished = stats.written + stats.skipped
        if self.bar is not None:
            if finished > self.shown:
                self.bar.update(finished - self.shown)
                self.shown = finished
            self.bar.set_postfix(done=stats.done + stats.copied, skipped=stats.skipped, failed=stats.failed,
                                 refresh=False)
        elif not self.quiet and time.monotonic() - self.last >= _PROGRESS_EVERY:
            self.last = time.monotonic()
            click.echo(f"{PROG}: {finished} images: {stats.done + stats.copied} done, {stats.skipped} skipped, "
                       f"{stats.failed} failed ({stats.rate:.2f} images/s)", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@cli.command(context_settings=CONTEXT_SETTINGS,
             short_help="Caption a dataset into JSONL, CSV or Parquet; resumable.")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE", required=True,
              help="The records: .jsonl, .csv or .parquet (or --format). Rerunning the same command "
                   "skips what FILE already holds.")
@click.option("--format", "fmt", type=click.Choice(RECORD_FORMATS), default=None,
              help="Output format (default: from FILE's extension).")
@search_options
@model_options("Default: blip-large (blip-base with --low-vram).")
@input_options
@click.option("--allow-urls", is_flag=True, help="Download http(s) inputs (and URLs in lists and manifests).")
@click.option("--column", metavar="NAME", help="The path or URL column of CSV and Parquet manifests.")
@click.option("--store-features", type=click.Path(file_okay=False), metavar="DIR",
              help="Also save each image's features as DIR/<hash[:2]>/<hash>.safetensors.")
@click.option("--store-scores", type=click.IntRange(min=1), metavar="K",
              help="Keep each image's top K phrases per category, with scores, in its record (result.trace.top), "
                   "scored from its features after the search (a little time per image). The search and the "
                   "settings' fingerprint are those without it: adding it to a rerun redoes nothing, and the "
                   "records already done stay without scores.")
@click.option("--sidecar", is_flag=False, flag_value=".txt", default=None, metavar="[EXT]",
              callback=_sidecar_callback,
              help="Write each prompt beside its image (local files only): photo.txt, or photo.EXT "
                   "(.caption is what kohya reads).")
@click.option("--on-existing", type=click.Choice(ON_EXISTING), default="skip", show_default=True,
              help="For a caption file that exists: keep it, overwrite it, or append/prepend our prompt with \", \" "
                   "(--prefix still goes first, --suffix last).")
@click.option("--prefix", metavar="TEXT",
              help="Caption files: put TEXT (trigger words) first. It counts against --max-tokens: the prompt's "
                   "last phrases make room for it.")
@click.option("--suffix", metavar="TEXT", help="Caption files: put TEXT last (it counts against --max-tokens too).")
@click.option("--dedupe", is_flag=True,
              help="With append/prepend: leave out our phrases the existing caption already has.")
@click.option("--retry-failed", is_flag=True,
              help="Retry the inputs FILE holds error records for, with the settings, models and output options "
                   "they ran with (kept in FILE.failed.json); a search or model option that says otherwise is refused.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray Data (pip install 'image2prompt[ray]'): a local instance, or with --ray=ADDRESS "
                   "the cluster at ADDRESS (HEAD:6379). Decoding in CPU tasks, encoding and searching in actor pools; "
                   "see docs/scale.md.")
@click.option("--encode-actors", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="With --ray: model replicas that encode (one per GPU, usually).")
@click.option("--search-actors", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="With --ray: CPU actors that search.")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0, show_default=True, metavar="G",
              help="With --ray: GPUs each encode actor takes (0.5 puts two on one GPU).")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0.1), default=1, show_default=True, metavar="C",
              help="With --ray: CPUs each actor takes; cut to fit (said in one line) when the actors and "
                   "a decoding task do not fit in the cluster's CPUs.")
@verbosity_options
def batch(inputs: tuple[str, ...], output: str, fmt: str | None, mode: str, with_negative: bool, beam: int,
          max_tokens: int, chunks: bool, candidates: int, flavors: tuple[int, int], floor: float | None,
          memory_budget: int | None,
          target: str | None, clip_name: tuple[str, ...], caption_model: str | None, caption: str | None,
          vocab: tuple[str, ...], device: str, precision: str, caption_precision: str | None, low_vram: bool,
          cache_dir: str | None,
          batch_size: int, max_pixels: int | None, allow_urls: bool, column: str | None,
          store_features: str | None, store_scores: int | None, sidecar: str | None, on_existing: str,
          prefix: str | None, suffix: str | None, dedupe: bool, retry_failed: bool, ray_address: str | None,
          encode_actors: int, search_actors: int, gpus_per_actor: float, cpus_per_actor: float,
          quiet: bool, verbose: bool, debug: bool) -> None:
    """Caption a dataset: one record per image in FILE, resumable, each identical image computed once.

    INPUT may be image files, folders, globs, .txt path lists (such as FILE.failed.txt,
    which lists the inputs that failed), CSV/Parquet manifests, WebDataset .tar shards
    and, with --allow-urls, http(s) URLs. Rerunning the same command after an
    interruption skips what FILE holds (by content hash and settings) and does the rest;
    changed settings redo the work. The exit status is 1 if any input failed in this run.
    """
    from ..batch.engine import BatchJob
    from ..batch.sidecars import SidecarOptions

    setup_logging(verbose, debug, quiet)
    if sidecar is None and (prefix or suffix or dedupe or on_existing != "skip"):
        raise click.UsageError("--prefix, --suffix, --dedupe and --on-existing need --sidecar")
    if dedupe and on_existing not in ("append", "prepend"):
        raise click.UsageError("--dedupe needs --on-existing append or prepend")
    try:  # an output format that cannot be told is a usage error, before anything loads
        format_for(output, fmt)
    except OutputError as err:
        raise UsageLine(str(err)) from None
    clip = pick_clip(clip_name, target)
    captioner = pick_captioner(caption_model)
    check_caption(mode, captioner, caption)
    warn_unused_beam(mode, beam)
    if caption or mode == "negative":
        captioner = None
    show_bar = progress_enabled(quiet)
    progress = _BatchProgress(inputs, allow_urls, column, show_bar, quiet)
    with fatal_errors(debug, ValueError):
        settings = SearchSettings(mode=mode, beam=beam, max_tokens=max_tokens, chunks=chunks,
                                  candidates=candidates, min_flavors=flavors[0], max_flavors=flavors[1],
                                  floor=floor, negative=with_negative)
        if retry_failed:  # the settings, models and output options the failed inputs ran with
            settings, clip, captioner, vocab, caption, outputs = _retry_as_run(output, settings, clip, captioner,
                                                                               vocab, caption, low_vram)
            sidecar, on_existing = outputs.get("sidecar", sidecar), outputs.get("on_existing", on_existing)
            prefix, suffix = outputs.get("prefix", prefix), outputs.get("suffix", suffix)
            dedupe = outputs.get("dedupe", dedupe)
            store_features = outputs.get("store_features", store_features)
            store_scores = outputs.get("store_scores", store_scores)
        config = model_config(clip=clip, captioner=captioner, device=device, precision=precision,
                              caption_precision=caption_precision, cache_dir=cache_dir, vocab=vocab,
                              low_vram=low_vram, memory_budget_mb=memory_budget, batch_size=batch_size)
        sidecar_options = SidecarOptions(ext=sidecar, on_existing=on_existing, prefix=prefix, suffix=suffix,
                                         dedupe=dedupe) if sidecar is not None else None

    def load() -> Interrogator:  # called once the first image needs the model
        return load_interrogator(config, show_progress=show_bar, debug=debug, say=progress.say)

    job = BatchJob(inputs, output, interrogator=load, settings=settings, config=config, fmt=fmt,
                   allow_urls=allow_urls, column=column, batch_size=batch_size, max_pixels=max_pixels,
                   caption=caption, store_features=store_features, store_scores=store_scores,
                   sidecar=sidecar_options, retry_failed=retry_failed, progress=progress,
                   on_error=lambda line: progress.say(f"{PROG}: error: {cli_words(line)}"))
    try:
        with fatal_errors(debug, OSError):
            if ray_address is None:
                stats = job.run()
            else:
                from ..batch.ray_backend import run_on_ray

                stats = run_on_ray(list(inputs), output=output, config=config, settings=settings,
                                   address=None if ray_address == "local" else ray_address,
                                   encode_actors=encode_actors, search_actors=search_actors,
                                   num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=cpus_per_actor,
                                   batch_size=batch_size,
                                   allow_urls=allow_urls, column=column, max_pixels=max_pixels, caption=caption,
                                   fmt=fmt, store_scores=store_scores, store_features=store_features,
                                   sidecar=sidecar_options, retry_failed=retry_failed, progress=progress,
                                   on_error=lambda line: progress.say(f"{PROG}: error: {cli_words(line)}"))
    except FatalError as err:
        if job.stats.seen and ray_address is None:  # it stopped in the middle: say so (the records written stand)
            raise FatalError(f"stopping: {err.format_message()}") from None
        raise
    finally:
        progress.close()
    if not quiet:
        line = f"{PROG}: {output}: {stats.summary()}"
        if stats.failed:
            line += f"; failed inputs are listed in {failure_manifest_path(output)}"
        click.echo(line, err=True)
    if stats.failed:
        click.get_current_context().exit(1)


# --- analyze ---------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT_SETTINGS, short_help="Show the top phrases of every category, with scores.")
@click.argument("image", metavar="IMAGE")
@click.option("--top", "top_n", type=click.IntRange(min=1), metavar="N", default=5, show_default=True,
              help="Phrases shown per category.")
@model_options("Default: none (no caption is generated).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--max-pixels", metavar="N|none", default=str(DEFAULT_MAX_PIXELS), show_default=True,
              callback=_max_pixels_callback,
              help="Refuse images with more than N pixels (width × height, read from the file's header "
                   "before decoding); none lifts the limit.")
@verbosity_options
def analyze(image: str, top_n: int, target: str | None, clip_name: tuple[str, ...], caption_model: str | None,
            caption: str | None, vocab: tuple[str, ...], device: str, precision: str, caption_precision: str | None,
            low_vram: bool, cache_dir: str | None, fmt: str, max_pixels: int | None, quiet: bool, verbose: bool,
            debug: bool) -> None:
    """Show the top phrases of every vocabulary category for IMAGE, with CLIP scores.

    Use it to see what the scaffold is built from and how close the alternatives are.
    Scores are CLIP similarities: comparable within one model, not probabilities.
    Artist names are marked (hypothesis): the image resembles work tagged with them.
    """
    setup_logging(verbose, debug, quiet)
    clip = pick_clip(clip_name, target)
    captioner = None if caption or caption_model is None else pick_captioner(caption_model)
    sources = list(expand_sources(image))
    if len(sources) != 1:
        raise click.UsageError(f"analyze takes one image; {image!r} gave {len(sources)}")
    try:
        if isinstance(sources[0], ImageLoadError):
            raise sources[0]
        source: ImageSource = sources[0]
        img = load_image(source, max_pixels=max_pixels)
    except ImageLoadError as err:
        raise FatalError(str(err)) from None
    config = model_config(clip=clip, captioner=captioner, device=device, precision=precision,
                          caption_precision=caption_precision, cache_dir=cache_dir, vocab=vocab, low_vram=low_vram)
    interrogator = load_interrogator(config, show_progress=progress_enabled(quiet), debug=debug)
    with fatal_errors(debug):
        if caption is None and interrogator.captioner is not None:
            caption = interrogator.caption([img])[0]
        analysis = interrogator.analyze(img, top_n, caption=caption, source=source.name)
    if fmt == "json":
        click.echo(json.dumps(analysis.to_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(format_analysis(analysis), nl=False)


# --- models ------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT_SETTINGS, short_help="List targets, CLIP models and captioners.")
def models() -> None:
    """List the --target names, the caption models, the model name schemes and the CLIP
    models open_clip knows (ARCH/TAG). Nothing is loaded or downloaded."""
    out: list[str] = ["Targets (--target): the CLIP backbone of each Stable Diffusion family's text encoder"]
    width = max(map(len, TARGETS))
    for name, clip in TARGETS.items():
        aliases = [a for a, t in TARGET_ALIASES.items() if t == name]
        extra = "  (default)" if clip == DEFAULT_CLIP else ""
        extra += f"  also: {', '.join(aliases)}" if aliases else ""
        out.append(f"  {name:<{width}}  {clip}{extra}")
    from ..interrogator import DEFAULT_CAPTIONER, LOW_VRAM_CAPTIONER  # what caption_model="auto" picks

    out += ["", "Caption models (--caption-model)"]
    width = max(map(len, CAPTION_MODELS))
    for name, repo in CAPTION_MODELS.items():
        extra = ("  (default)" if name == DEFAULT_CAPTIONER
                 else "  (default with --low-vram)" if name == LOW_VRAM_CAPTIONER else "")
        out.append(f"  {name:<{width}}  {repo}{extra}")
    out.append(f"  {'none':<{width}}  no captioner: pass --caption TEXT")
    out += [
        "",
        "Name schemes (--clip, --caption-model)",
        "  ARCH/TAG          an open_clip model and pretrained tag, e.g. ViT-L-14/openai",
        "  local-dir:PATH    a local folder: open_clip (open_clip_config.json + weights)",
        "                    or transformers (save_pretrained, config.json)",
        "  hf-hub:ORG/REPO   an open_clip model on the Hugging Face Hub (--clip)",
        "  hf:ORG/REPO       a transformers model on the Hub, e.g. hf:openai/clip-vit-large-patch14",
        "",
        "Presets (--clip NAME): several models scored together (mean similarity)",
        *[f"  {name:<16}  {' + '.join(models)}" for name, models in CLIP_PRESETS.items()],
        "",
    ]
    names = open_clip_names()
    if names is None:
        out.append("CLIP models (--clip ARCH/TAG): install open_clip_torch to list them.")
    else:
        out.append(f"CLIP models known to open_clip (--clip ARCH/TAG), {len(names)}:")
        out += [f"  {n}" for n in names]
    click.echo("\n".join(out))


# --- cache ----------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT_SETTINGS, short_help="Show or clear the embedding cache.")
def cache() -> None:
    """Show where cached data lives, or clear the cached vocabulary embeddings."""


cache_dir_option = click.option("--cache-dir", type=click.Path(), metavar="DIR", callback=_cache_dir_callback,
                                help="The embedding cache to use (default: the per-user cache).")


@cache.command("info")
@click.option("--cache-dir", type=click.Path(), metavar="DIR",
              help="The embedding cache to show (default: the per-user cache).")
def cache_info(cache_dir: str | None) -> None:
    """Show where vocabulary embeddings and model weights are cached, and their sizes.

    Creates nothing."""
    emb = EmbeddingCache(cache_dir, download=False)
    entries = list(emb.entries())
    total = sum(e.size_bytes for e in entries)
    blocker = emb.file_in_the_way()
    if emb.directory.is_dir():
        state = f"{len(entries)} files, {_size(total)}"
    elif blocker == emb.directory:
        state = "not a directory: this is a file"
    elif blocker is not None:
        state = f"cannot be created: {blocker} is a file"
    else:
        state = "does not exist yet"
    click.echo(f"Vocabulary embeddings: {emb.directory}  ({state})")
    click.echo("  (set IMAGE2PROMPT_CACHE_DIR or pass --cache-dir to move it; `cache clear` empties it)")
    hub = _hub_cache_dir()
    if hub.is_dir():
        state = _size(_tree_size(hub))
    else:
        state = "does not exist yet"
    click.echo(f"Model weights (Hugging Face hub cache, also used by open_clip): {hub}  ({state})")
    click.echo("  (set HF_HOME or HF_HUB_CACHE to move it; manage it with `hf cache` / `huggingface-cli`)")


@cache.command("clear")
@cache_dir_option
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(cache_dir: str | None, yes: bool) -> None:
    """Delete the cached vocabulary embeddings (model weights are kept).

    They are recomputed, or downloaded again, the next time they are needed."""
    emb = EmbeddingCache(cache_dir, download=False)
    entries = list(emb.entries())
    if not entries:
        click.echo(f"Nothing to clear in {emb.directory}")
        return
    total = sum(e.size_bytes for e in entries)
    if not yes:
        click.confirm(f"Delete {len(entries)} cached embedding files ({_size(total)}) in {emb.directory}?",
                      abort=True, err=True)
    try:
        removed = emb.clear()
    except OSError as err:
        raise FatalError(f"{emb.directory}: cannot delete cache files ({err.strerror or err})") from None
    click.echo(f"Deleted {removed} files ({_size(total)}) from {emb.directory}")


def _hub_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
        return Path(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")).expanduser()


def _tree_size(root: Path) -> int:
    """Bytes of the regular files under ``root`` (the hub's snapshot symlinks are not counted twice)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
    return total


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


# --- entry point --------------------------------------------------------------------------

from . import report as _report  # noqa: E402,F401  (registers `report`; matplotlib loads only when it runs)
from . import serve as _serve  # noqa: E402,F401  (registers `serve`; FastAPI loads only when it runs)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: exit 0 on success, 1 on failed inputs or load errors, 2 on usage errors."""
    cli.main(args=list(argv) if argv is not None else None, prog_name=PROG)
    raise SystemExit(0)  # pragma: no cover - cli.main always exits in standalone mode


if __name__ == "__main__":  # pragma: no cover
    main()
