"""``image2prompt run`` (the default command): a prompt scaffold for each image."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from ..errors import Image2PromptError, one_line
from ..io import expand_sources
from ..io.sources import is_url
from ..render import FORMATS, make_writer, shows_similarity
from ..runner import Runner
from .app import CONTEXT_SETTINGS, DEFAULT_COMMAND, FatalError, UsageLine, fatal_errors, load_interrogator, model_config
from .options import input_options, model_options, pick_models, search_options, search_settings, verbosity_options
from .progress import Reporter, progress_enabled, setup_logging

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator


@click.command(DEFAULT_COMMAND, context_settings=CONTEXT_SETTINGS,
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
        output: str | None, batch_size: int, max_pixels: int | None, quiet: bool, verbose: bool, debug: bool) -> None:
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
    clip, captioner = pick_models(mode, beam, clip_name, target, caption_model, caption)
    with fatal_errors(debug):
        # text and weighted output do not show the prompt's similarity, so fast and classic
        # skip the one text encode per image that computes it
        settings = search_settings(mode=mode, with_negative=with_negative, beam=beam, max_tokens=max_tokens,
                                   chunks=chunks, candidates=candidates, flavors=flavors, floor=floor,
                                   score_prompt=shows_similarity(fmt))
    items = list(expand_sources(inputs))
    show_progress = progress_enabled(quiet)
    with _open_output(output, fmt) as stream:
        writer = make_writer(fmt, stream, single=names_one_image(inputs))
        reporter = Reporter(len(items), show_progress and len(items) > 1)

        def load() -> Interrogator:  # called by the runner once the first image has decoded
            config = model_config(clip=clip, captioner=captioner, device=device, precision=precision,
                                  caption_precision=caption_precision, cache_dir=cache_dir, vocab=vocab,
                                  low_vram=low_vram, memory_budget_mb=memory_budget, batch_size=batch_size)
            return load_interrogator(config, show_progress=show_progress, debug=debug, say=reporter.say)

        failures = 0
        try:
            for record in Runner(load, settings, batch_size=batch_size, caption=caption, max_pixels=max_pixels).run(items):
                if record.result is not None:
                    writer.write(record.result)
                else:
                    reporter.error(record.error or f"{record.source}: failed")
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
