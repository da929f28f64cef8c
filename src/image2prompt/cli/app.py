"""What every command shares: the ``image2prompt`` group, its errors and model loading.

Only the standard library and click are imported here; torch, open_clip and transformers
load when a model does (:func:`load_interrogator`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

import click

from .. import __version__
from ..errors import Image2PromptError, SettingsError
from ..models.instructions import DEFAULT_CAPTION_TYPE, build_instruction
from .progress import PROG, cli_words, table_progress

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Config, Interrogator

DEFAULT_COMMAND = "run"
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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


#: ``ctx.meta`` key: DefaultGroup put the default command's name in front of the arguments.
_DEFAULT_INSERTED = "image2prompt.default_command_inserted"


class _ImplicitCommandUsageError(click.UsageError):
    """A usage error of the default command, shown as the group's usage (``image2prompt [OPTIONS]
    PATH_OR_URL...`` and ``Try 'image2prompt -h'``): the user never typed the command's name."""

    def __init__(self, original: click.UsageError, group_ctx: click.Context) -> None:
        super().__init__(original.format_message(), original.ctx)
        self.group_ctx = group_ctx
        self.exit_code = original.exit_code  # type: ignore[misc]  # click reads it off the instance

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

    default_command = DEFAULT_COMMAND

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own = {name for param in self.get_params(ctx) for name in (*param.opts, *param.secondary_opts)}
        if args and args[0] not in self.commands and args[0] not in own:
            args = [self.default_command, *args]
            ctx.meta[_DEFAULT_INSERTED] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
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


#: Where the caption options (cli/options.py) are kept until model_config reads them: click's
#: per-invocation meta, so the commands' signatures do not each carry eight more parameters.
CAPTION_META = "image2prompt.caption"


def caption_config(given: dict[str, Any]) -> dict[str, Any]:
    """The ``Config`` fields the caption options give: the instruction (built only when one was
    asked for, so the default stays the captioner's own), endpoint, concurrency, token limit."""
    out: dict[str, Any] = {}
    if any(k in given for k in ("caption_type", "caption_length", "caption_extra", "caption_name", "caption_prompt")):
        try:
            out["caption_prompt"] = build_instruction(
                given.get("caption_type", DEFAULT_CAPTION_TYPE), length=given.get("caption_length"),
                extra=given.get("caption_extra", ()), template=given.get("caption_prompt"),
                name=given.get("caption_name"))
        except SettingsError as err:
            raise click.UsageError(str(err)) from None
    for option, field in (("caption_endpoint", "caption_endpoint"), ("caption_concurrency", "caption_concurrency"),
                          ("caption_max_tokens", "caption_max_tokens")):
        if option in given:
            out[field] = given[option]
    return out


def model_config(*, clip: Sequence[str], captioner: str | None, device: str, precision: str,
                 caption_precision: str | None, cache_dir: str | None, vocab: Sequence[str], low_vram: bool,
                 memory_budget_mb: int | None = None, batch_size: int | None = None) -> Config:
    """The load-time ``Config`` from the model options the commands share. ``batch_size``
    (``--batch-size``, where a command has it) is also the captioner's and the image tower's."""
    from ..interrogator import Config

    ctx = click.get_current_context(silent=True)  # the caption options: call this in the command itself
    captioning = caption_config(ctx.meta.get(CAPTION_META, {}) if ctx is not None else {})
    config = Config(clip_model=list(clip), caption_model=captioner, device=device, precision=precision,
                    caption_precision=caption_precision, cache_dir=cache_dir, vocab=tuple(vocab),
                    low_vram=low_vram, memory_budget_mb=memory_budget_mb, **captioning)
    if batch_size is not None:
        config = dataclasses.replace(config, caption_batch_size=batch_size, image_batch_size=batch_size)
    return config


def load_interrogator(config: Config, *, show_progress: bool, debug: bool,
                      say: Callable[[str], None] | None = None) -> Interrogator:
    """Load the models (the only place torch gets imported), from load-time settings only."""
    with fatal_errors(debug, ValueError):
        from ..interrogator import Interrogator

        if show_progress:
            clips = [config.clip_model] if isinstance(config.clip_model, str) else list(config.clip_model)
            what = " + ".join(clips) + (f" and {config.captioner}" if config.captioner else "")
            (say or (lambda m: click.echo(m, err=True)))(f"{PROG}: loading {what}...")
        else:
            _quiet_library_progress()
        return Interrogator.load(config, progress=table_progress(show_progress))


def _quiet_library_progress() -> None:
    """Silence the download and weight-loading bars of huggingface_hub and transformers
    (logs and pipes get no carriage-return noise; --quiet means quiet)."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "transformers" in sys.modules:  # it read the hub's setting when it was imported
        try:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
        except AttributeError:  # pragma: no cover
            pass
