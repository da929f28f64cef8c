"""``image2prompt report``: the style study over ``batch`` records (needs the ``report`` extra)."""

from __future__ import annotations

import click

from ..errors import SettingsError
from .app import CONTEXT_SETTINGS, FatalError, fatal_errors
from .options import verbosity_options
from .progress import PROG, setup_logging


def _group_by(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A bad --group-by (an unknown kind, a regular expression that does not compile) is a usage error."""
    if value is not None:
        from ..report.collect import grouper

        try:
            grouper(value)
        except SettingsError as err:
            raise click.BadParameter(str(err).removeprefix("--group-by ")) from None
    return value


@click.command(context_settings=CONTEXT_SETTINGS, short_help="Report how CLIP sees a collection (from batch records).")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="RESULTS...")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the report: one self-contained HTML page that opens offline.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the numbers behind it as JSON.")
@click.option("--group-by", metavar="folder|column:NAME|regex:PATTERN", callback=_group_by,
              help="Compare groups: the image's folder, a record field (e.g. column:mode), or the first group "
                   "of a regular expression on the source.")
@click.option("--fingerprint", "fingerprints", multiple=True, metavar="FP",
              help="Count only the records of this settings fingerprint (a prefix will do; repeatable). "
                   "By default each image's latest record is counted, whatever its fingerprint.")
@click.option("--features", type=click.Path(file_okay=False), metavar="DIR",
              help="The folder of batch --store-features, for the map of the image features.")
@click.option("--map", "map_method", type=click.Choice(["pca", "umap"]), default="pca", show_default=True,
              help="How the map is made (umap needs umap-learn installed).")
@click.option("--top", type=click.IntRange(min=1, max=50), default=12, show_default=True, metavar="N",
              help="Phrases shown per category.")
@click.option("--thumbnails", type=click.IntRange(min=0, max=1000), default=48, show_default=True, metavar="N",
              help="At most N thumbnails of weak matches (40 more on the map), embedded small.")
@click.option("--points", type=click.IntRange(min=3), default=2000, show_default=True, metavar="N",
              help="At most N images on the map (a uniform sample).")
@click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Where to look for images named by relative paths (default: the records' folder, then here).")
@verbosity_options
def report(results: tuple[str, ...], html_path: str | None, json_path: str | None, group_by: str | None,
           fingerprints: tuple[str, ...], features: str | None, map_method: str, top: int, thumbnails: int,
           points: int, roots: tuple[str, ...], quiet: bool, verbose: bool, debug: bool) -> None:
    """Report how CLIP sees a collection, from the records `image2prompt batch` wrote.

    RESULTS are JSONL, CSV or Parquet outputs of batch. Run batch with --store-scores K
    (each image's top K phrases per category, with scores) and --store-features DIR (for
    the map) to get the whole report; no model is loaded here. The page shows the
    phrases that score highest and their score distributions, how often phrases reach
    the prompts, the phrases that separate groups (effect sizes with bootstrap
    intervals, false discovery rate controlled), phrases that co-occur, weak matches
    and a map of the image features.

    Each image is counted once: batch adds a record per image each time its settings
    change, and only the latest is counted (or those of --fingerprint FP); what was left
    out is said on the page and here.
    """
    setup_logging(verbose, debug, quiet)
    if not html_path and not json_path:
        raise click.UsageError("give --html FILE, --json FILE or both")
    try:
        from ..report import ReportOptions, build_report

        if html_path:
            import matplotlib  # noqa: F401  (the figures)
    except ImportError as err:
        raise FatalError(f"report needs the report extra ({err.name or err} is missing): "
                         "pip install 'image2prompt[report]'") from None
    options = ReportOptions(group_by=group_by, features=features, map_method=map_method, top=top,
                            thumbnails=thumbnails, points=points, roots=roots, fingerprints=fingerprints)
    with fatal_errors(debug):
        summary = build_report(results, options, html_path=html_path, json_path=json_path)
    if not quiet:
        wrote = " and ".join(p for p in (html_path, json_path) if p)
        flagged = len(summary["separating"]["significant"])
        click.echo(f"{PROG}: {summary['images']} images in {len(summary['groups'])} group(s); "
                   f"{flagged} separating phrase(s); wrote {wrote}", err=True)
