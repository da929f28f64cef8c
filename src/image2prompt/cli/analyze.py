"""``image2prompt analyze``: the top phrases of every category for one image, with scores."""

from __future__ import annotations

import json

import click

from ..errors import ImageLoadError
from ..io import expand_sources, load_image
from ..render import format_analysis
from .app import CONTEXT_SETTINGS, FatalError, fatal_errors, load_interrogator, model_config
from .options import max_pixels_option, model_options, pick_captioner, pick_clip, verbosity_options
from .progress import progress_enabled, setup_logging


@click.command(context_settings=CONTEXT_SETTINGS, short_help="Show the top phrases of every category, with scores.")
@click.argument("image", metavar="IMAGE")
@click.option("--top", "top_n", type=click.IntRange(min=1), metavar="N", default=5, show_default=True,
              help="Phrases shown per category.")
@model_options("Default: none (no caption is generated).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@max_pixels_option()
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
    source = sources[0]
    try:
        if isinstance(source, ImageLoadError):
            raise source
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
