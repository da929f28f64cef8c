"""``image2prompt batch``: caption a dataset into JSONL, CSV or Parquet records, resumably."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ..batch.engine import failure_manifest_path
from ..batch.records import FORMATS as RECORD_FORMATS
from ..batch.records import OutputError, format_for
from ..batch.retry import RetryPlan, RetryRefused, plan_retry
from ..batch.sidecars import ON_EXISTING
from ..settings import SearchSettings
from .app import CONTEXT_SETTINGS, FatalError, UsageLine, fatal_errors, load_interrogator, model_config
from .options import input_options, model_options, pick_models, search_options, search_settings, verbosity_options
from .progress import PROG, Reporter, progress_enabled, setup_logging

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator

_SIDECAR_EXT = re.compile(r"^\.?[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")
_PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


def _sidecar_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    if not _SIDECAR_EXT.match(value):
        raise click.BadParameter(f"{value!r} is not a file extension such as .txt or .caption "
                                 "(give --sidecar after the inputs, or with its extension)")
    return value if value.startswith(".") else "." + value


# --- --retry-failed: the policy is the library's (image2prompt.batch.retry.plan_retry) ----------

#: What plan_retry compares -> the parameters of this command that set it.
_RETRY_PARAMS: dict[str, tuple[str, ...]] = {
    "mode": ("mode",), "negative": ("with_negative",), "beam": ("beam",), "max_tokens": ("max_tokens",),
    "chunks": ("chunks",), "candidates": ("candidates",), "min_flavors": ("flavors",), "max_flavors": ("flavors",),
    "floor": ("floor",), "clip": ("clip_name", "target"), "captioner": ("caption_model", "caption"),
    "caption": ("caption",), "caption_column": ("caption_column",), "vocab": ("vocab",),
    "sidecar": ("sidecar", "on_existing", "prefix", "suffix", "dedupe"),
    "store_features": ("store_features",), "store_scores": ("store_scores",),
}
#: How plan_retry's refusal names them here.
_RETRY_WORDS = {"mode": "--mode", "negative": "--negative", "beam": "--beam", "max_tokens": "--max-tokens",
                "chunks": "--chunks", "candidates": "--candidates", "flavors": "--flavors", "floor": "--floor",
                "clip": "--clip", "captioner": "--caption-model", "caption": "--caption",
                "caption_column": "--caption-column", "vocab": "--vocab", "retry": "--retry-failed"}


def _retry_plan(output: str, settings: SearchSettings, clip: list[str], captioner: str | None,
                vocab: Sequence[str], caption: str | None, caption_column: str | None, low_vram: bool) -> RetryPlan:
    """--retry-failed: the settings, models and output options the failed inputs ran with; a search
    or model option given here that says otherwise is refused, in one line."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    unset = (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    given = {key for key, params in _RETRY_PARAMS.items() if any(ctx.get_parameter_source(p) not in unset for p in params)}
    try:
        return plan_retry(output, settings, clip=clip, captioner=captioner, vocab=vocab, caption=caption,
                          caption_column=caption_column, low_vram=low_vram, given=given, names=_RETRY_WORDS)
    except RetryRefused as err:
        raise FatalError(str(err)) from None


class _BatchProgress(Reporter):
    """A tqdm bar on a terminal; otherwise a plain line every 30 seconds (nothing with --quiet)."""

    def __init__(self, inputs: Sequence[str], allow_urls: bool, column: str | None, bar: bool, quiet: bool) -> None:
        super().__init__(None, bar)
        self.quiet = quiet
        self.shown = 0
        self.last = time.monotonic()
        if bar:  # the total is counted in the background (a listing, no image read): the ETA appears when known
            import threading

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


@click.command(context_settings=CONTEXT_SETTINGS, short_help="Caption a dataset into JSONL, CSV or Parquet; resumable.")
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
@click.option("--caption-column", metavar="NAME",
              help="Use each image's own caption instead of a generated one: the manifest column NAME, or in "
                   "WebDataset shards the sample's member with extension NAME (txt: KEY.txt). Images without one "
                   "get --caption or a generated caption. An image's caption is part of its key in FILE.")
@click.option("--store-features", type=click.Path(file_okay=False), metavar="DIR",
              help="Also save each image's features as DIR/<hash[:2]>/<hash>.safetensors.")
@click.option("--store-scores", type=click.IntRange(min=1), metavar="K",
              help="Keep each image's top K phrases per category, with scores, in its record (result.trace.top), "
                   "scored from its features after the search (a little time per image). The search and the "
                   "settings' fingerprint are those without it: adding it to a rerun redoes nothing, and the "
                   "records already done stay without scores.")
@click.option("--sidecar", is_flag=False, flag_value=".txt", metavar="[EXT]", callback=_sidecar_callback,
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
          memory_budget: int | None, target: str | None, clip_name: tuple[str, ...], caption_model: str | None,
          caption: str | None, vocab: tuple[str, ...], device: str, precision: str, caption_precision: str | None,
          low_vram: bool, cache_dir: str | None, batch_size: int, max_pixels: int | None, allow_urls: bool,
          column: str | None, caption_column: str | None, store_features: str | None, store_scores: int | None,
          sidecar: str | None, on_existing: str, prefix: str | None, suffix: str | None, dedupe: bool,
          retry_failed: bool, ray_address: str | None, encode_actors: int, search_actors: int, gpus_per_actor: float,
          cpus_per_actor: float, quiet: bool, verbose: bool, debug: bool) -> None:
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
    clip, captioner = pick_models(mode, beam, clip_name, target, caption_model, caption, caption_column)
    show_bar = progress_enabled(quiet)
    progress = _BatchProgress(inputs, allow_urls, column, show_bar, quiet)
    with fatal_errors(debug, ValueError):
        settings = search_settings(mode=mode, with_negative=with_negative, beam=beam, max_tokens=max_tokens,
                                   chunks=chunks, candidates=candidates, flavors=flavors, floor=floor)
        if retry_failed:  # the settings, models and output options the failed inputs ran with
            plan = _retry_plan(output, settings, clip, captioner, vocab, caption, caption_column, low_vram)
            settings, clip, captioner, vocab = plan.settings, plan.clip, plan.captioner, plan.vocab
            caption, caption_column, outputs = plan.caption, plan.caption_column, plan.outputs
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

    both: dict[str, Any] = {  # what the local engine and Ray's are both given
        "settings": settings, "config": config, "fmt": fmt, "allow_urls": allow_urls, "column": column,
        "caption_column": caption_column, "batch_size": batch_size, "max_pixels": max_pixels, "caption": caption,
        "store_features": store_features, "store_scores": store_scores, "sidecar": sidecar_options,
        "retry_failed": retry_failed, "progress": progress, "on_error": progress.error}
    job = BatchJob(inputs, output, interrogator=load, **both)
    try:
        with fatal_errors(debug, OSError):
            if ray_address is None:
                stats = job.run()
            else:
                from ..batch.ray import run_on_ray

                stats = run_on_ray(list(inputs), output=output, address=None if ray_address == "local" else ray_address,
                                   encode_actors=encode_actors, search_actors=search_actors,
                                   num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=cpus_per_actor, **both)
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
