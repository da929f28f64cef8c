"""The batch engine: hashing before the model, skipping what is done, identical images once, lazy loading,
features and scores, retries, caption files and bounded reading."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from image2prompt.batch.engine import BatchJob, failure_manifest_path, feature_path
from image2prompt.batch.inputs import InputItem
from image2prompt.batch.records import read_records
from image2prompt.batch.sidecars import SidecarOptions
from image2prompt.errors import ImageLoadError
from image2prompt.features import Features
from image2prompt.identity import ModelIdentity
from image2prompt.interrogator import Config, Interrogator
from image2prompt.settings import SearchSettings
from tests.conftest import make_images
from tests.test_runner import FakeInterrogator

FAST = SearchSettings(mode="fast", max_flavors=6)


@pytest.fixture(scope="session")
def emb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch-emb")


@pytest.fixture
def config(tiny_open_clip: Path, small_vocab_dir: Path, emb_dir: Path) -> Config:
    return Config(clip_model=[f"local-dir:{tiny_open_clip}"], caption_model=None, device="cpu",
                  vocab=(str(small_vocab_dir),), cache_dir=str(emb_dir))


class Loads:
    """A lazy interrogator factory that counts its calls."""

    def __init__(self, config: Config) -> None:
        self.config, self.calls = config, 0

    def __call__(self) -> Interrogator:
        self.calls += 1
        return Interrogator.load(self.config)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i, im in enumerate(make_images(5)):
        im.save(d / f"{i}.png")
    shutil.copy(d / "0.png", d / "dup.png")  # identical to 0.png, arrives while 0.png is in flight
    (d / "garbage.png").write_bytes(b"not a png at all")
    return d


def job(config: Config, inputs: list[Any], out: Path, loads: Loads | None = None, **kw: Any) -> BatchJob:
    return BatchJob([str(i) for i in inputs], out, interrogator=loads or Loads(config), config=config,
                    settings=kw.pop("settings", FAST), caption="x", batch_size=kw.pop("batch_size", 4), **kw)


def by_source(out: Path) -> dict[str, dict[str, Any]]:
    records = list(read_records(out))
    counts = Counter(r["source"] for r in records)
    assert max(counts.values()) == 1, counts
    return {Path(r["source"]).name: r for r in records}


def test_the_identity_told_from_the_config_is_the_loaded_one(config: Config) -> None:
    identity = ModelIdentity.of_config(config)
    loaded = Interrogator.load(config)
    assert identity is not None and identity == loaded.identity
    fp = identity.fingerprint(FAST)
    assert fp == loaded.fingerprint(FAST) and identity.fingerprint(FAST.replace(max_flavors=7)) != fp


def test_a_loaded_model_that_is_not_the_runs_identity_stops_the_run(config: Config, folder: Path,
                                                                    tmp_path: Path) -> None:
    """The identity is computed once, from the config; models that load as something else are refused,
    not silently relabelled mid-run."""
    from dataclasses import replace

    from image2prompt.identity import IdentityMismatch

    other = replace(config, vocab=())  # the default vocabulary: another identity than the config's
    out = tmp_path / "out.jsonl"
    mislabelled = BatchJob([str(folder)], out, interrogator=lambda: Interrogator.load(config), config=other,
                           settings=FAST, caption="x")
    with pytest.raises(IdentityMismatch, match="are not the run's"):
        mislabelled.run()
    assert all(not r["ok"] for r in read_records(out))  # only the unreadable inputs were written, before the load


def test_run_resume_and_identical_images(config: Config, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    loads = Loads(config)
    stats = job(config, [folder], out, loads).run()
    assert (stats.seen, stats.done, stats.copied, stats.failed, stats.skipped) == (7, 5, 1, 1, 0)
    assert loads.calls == 1
    recs = by_source(out)
    assert set(recs) == {"0.png", "1.png", "2.png", "3.png", "4.png", "dup.png", "garbage.png"}
    assert recs["dup.png"]["result"]["prompt"] == recs["0.png"]["result"]["prompt"]
    assert recs["dup.png"]["content_hash"] == recs["0.png"]["content_hash"]
    assert recs["dup.png"]["result"]["source"].endswith("dup.png")
    assert not recs["garbage.png"]["ok"] and "garbage.png" in recs["garbage.png"]["error"]
    assert len(recs["0.png"]["content_hash"]) == 64
    assert failure_manifest_path(out).read_text(encoding="utf-8") == f"{folder / 'garbage.png'}\n"

    # the same run again: everything is done, no model is loaded
    again = Loads(config)
    stats = job(config, [folder], out, again).run()
    assert (stats.skipped, stats.written, again.calls) == (7, 0, 0)

    # a new copy of a known image is copied from the output, still without a model
    shutil.copy(folder / "3.png", folder / "z-copy.png")
    stats = job(config, [folder], out, again).run()
    assert (stats.copied, stats.skipped, again.calls) == (1, 7, 0)
    assert by_source(out)["z-copy.png"]["result"]["prompt"] == recs["3.png"]["result"]["prompt"]

    # changed settings: another fingerprint, the work is redone and the old records stay
    stats = job(config, [folder], out, again, settings=FAST.replace(max_flavors=4)).run()
    assert (stats.done, stats.copied, stats.failed) == (5, 2, 1)
    records = list(read_records(out))
    assert len({r["fingerprint"] for r in records}) == 2 and len(records) == 8 + 8


def test_inputs_that_are_all_bad_load_no_model(config: Config, tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"\x00" * 10)
    loads = Loads(config)
    out = tmp_path / "out.csv"
    stats = job(config, [tmp_path / "empty.png", tmp_path / "junk.jpg", tmp_path / "missing.png"], out, loads).run()
    assert (stats.failed, loads.calls) == (3, 0)
    rows = by_source(out)
    assert [r["ok"] for r in rows.values()] == [False] * 3
    assert rows["missing.png"]["content_hash"] is None and "missing.png" in rows["missing.png"]["error"]
    # an empty file may fail when read (no hash) or when decoded (the hash of no bytes)
    assert rows["empty.png"]["content_hash"] in (None, hashlib.sha256(b"").hexdigest())
    assert "empty.png" in rows["empty.png"]["error"]
    assert len(failure_manifest_path(out).read_text(encoding="utf-8").splitlines()) == 3


def test_retry_failed(config: Config, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    make_images(1, size=80)[0].save(big)
    out = tmp_path / "out.jsonl"
    assert job(config, [big], out, max_pixels=100).run().failed == 1
    assert job(config, [big], out, max_pixels=None).run().skipped == 1  # an error record counts as done
    stats = job(config, [big], out, max_pixels=None, retry_failed=True).run()
    assert (stats.done, stats.failed) == (1, 0)
    (rec,) = read_records(out)
    assert rec["ok"]
    assert failure_manifest_path(out).read_text(encoding="utf-8") == ""


def test_store_features_and_scores(config: Config, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    feats = tmp_path / "feats"
    jsonl = tmp_path / "out.jsonl"
    job(config, [folder / "1.png", folder / "2.png"], jsonl, store_features=feats, store_scores=2).run()
    for rec in read_records(jsonl):
        f = Features.load(feature_path(feats, rec["content_hash"]))
        assert f.caption == "x" and len(f.vectors) == 1
        top = rec["result"]["trace"]["top"]
        assert top and all(len(v) <= 2 and {"text", "score"} <= set(v[0]) for v in top.values())
    job(config, [folder / "1.png"], out, store_scores=2).run()
    (row,) = read_records(out)
    assert row["ok"] is True and '"top"' in row["trace"]


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    make_images(i + 1)[i].save(buf, format="PNG")
    return buf.getvalue()


def test_caption_files_only_for_local_files(config: Config, folder: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    data = _png(2)
    items = [InputItem(str(folder / "1.png"), read=(folder / "1.png").read_bytes, path=folder / "1.png"),
             InputItem("shard.tar/a.png", read=lambda: data),
             InputItem("shard.tar/b.png", read=lambda: data)]
    out = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="image2prompt"):
        job(config, [], out, items=items, sidecar=SidecarOptions(prefix="sks")).run()
    assert len([r for r in caplog.records if "not local files" in r.getMessage()]) == 1
    assert (folder / "1.txt").read_text(encoding="utf-8").startswith("sks, x")
    assert sorted(p.name for p in folder.glob("*.txt")) == ["1.txt"]
    # a later run with --sidecar writes the caption files of what was already done
    job(config, [folder / "2.png"], out).run()
    assert not (folder / "2.txt").exists()
    stats = job(config, [folder / "2.png"], out, sidecar=SidecarOptions(ext=".caption")).run()
    assert stats.skipped == 1 and (folder / "2.caption").read_text(encoding="utf-8").startswith("x")


class CountingFake(FakeInterrogator):
    identity = ModelIdentity.of(["fake"], None, {})

    def fingerprint(self, settings: SearchSettings) -> str:
        return self.identity.fingerprint(settings)


def test_each_input_is_read_once_and_only_a_little_ahead(tmp_path: Path) -> None:
    blobs = [_png(i) for i in range(4)] + [b"broken"]
    reads: Counter[int] = Counter()
    lock = threading.Lock()
    n = 300
    worst = {"ahead": 0}

    def reader(i: int):  # type: ignore[no-untyped-def]
        def read() -> bytes:
            with lock:
                reads[i] += 1
            if i % 50 == 7:
                raise ImageLoadError(f"item{i}", "cannot read (gone)")
            return blobs[i % 5] + i.to_bytes(4, "big")  # all different (PNG readers ignore trailing bytes)
        return read

    def items() -> Iterator[InputItem]:
        for i in range(n):
            yield InputItem(f"item{i}", read=reader(i))

    def progress(stats: Any) -> None:
        with lock:
            read = sum(reads.values())
        worst["ahead"] = max(worst["ahead"], read - stats.written - stats.skipped)

    out = tmp_path / "out.jsonl"
    fake = CountingFake()
    stats = BatchJob([], out, items=items(), interrogator=fake, settings=FAST, batch_size=4, read_ahead=8,
                     progress=progress).run()
    assert set(reads.values()) == {1} and len(reads) == n
    assert stats.written == n and worst["ahead"] <= 8 + 2 * 4 + 4 + 4 + 2
    assert sum(len(b) for b in fake.batches) == n - n // 5 - len(range(7, n, 50))
    recs = list(read_records(out))
    assert len(recs) == n and sum(not r["ok"] for r in recs) == n // 5 + len(range(7, n, 50))


def test_trigger_words_come_first_and_count_against_the_budget(config: Config, folder: Path,
                                                               tmp_path: Path) -> None:
    ic = Interrogator.load(config)
    settings = SearchSettings(mode="fast", max_flavors=12, max_tokens=24)
    prefix = "sks dog, ohwx style painting"
    (folder / "1.txt").write_text("1girl, solo\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    sidecar = SidecarOptions(prefix=prefix, suffix="best quality", on_existing="append")
    job(config, [folder / "0.png", folder / "1.png"], out, settings=settings, sidecar=sidecar).run()
    prompts = {Path(r["source"]).stem: r["result"]["prompt"] for r in read_records(out)}
    assert ic.count_tokens(prompts["0"]) > 24 - 2 - ic.count_tokens(f"{prefix}, , best quality")  # needs room
    new = (folder / "0.txt").read_text(encoding="utf-8").strip()
    assert new.startswith(prefix + ", x") and new.endswith(", best quality")
    assert ic.count_tokens(new) <= 24 - 2  # the trigger words and the prompt together fit the budget
    assert prompts["0"].startswith(new[len(prefix) + 2: -len(", best quality")])  # the prompt's first phrases
    appended = (folder / "1.txt").read_text(encoding="utf-8").strip()
    assert appended.startswith(prefix + ", 1girl, solo, x")  # the trigger words lead, before the old caption
    assert appended.endswith(", best quality")
    # a rerun changes nothing
    stats = job(config, [folder / "0.png", folder / "1.png"], out, settings=settings, sidecar=sidecar).run()
    assert stats.skipped == 2 and stats.sidecars == {"unchanged": 2}
    assert (folder / "1.txt").read_text(encoding="utf-8").strip() == appended


def test_store_scores_is_an_output_option(config: Config, folder: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    settings = SearchSettings(mode="turbo", max_flavors=4, candidates=64)
    out = tmp_path / "out.jsonl"
    first = job(config, [folder / "1.png"], out, settings=settings).run()
    assert first.done == 1
    with caplog.at_level(logging.WARNING, logger="image2prompt"):  # adding --store-scores redoes nothing
        again = job(config, [folder / "1.png", folder / "2.png"], out, settings=settings, store_scores=3).run()
    assert (again.skipped, again.done) == (1, 1)
    assert any("1 image already done has no scores" in r.getMessage() for r in caplog.records)
    recs = by_source(out)
    assert recs["1.png"]["fingerprint"] == recs["2.png"]["fingerprint"]
    assert "trace" not in recs["1.png"]["result"]
    top = recs["2.png"]["result"]["trace"]["top"]
    assert {"artists", "flavors", "mediums", "movements"} <= set(top) and "negative" not in top
    assert all(len(v) == 3 and v[0]["score"] >= v[-1]["score"] for v in top.values())
    # the same search as without it: the same prompt, and the same phrases the floor kept out
    plain = tmp_path / "plain.jsonl"
    job(config, [folder / "2.png"], plain, settings=settings).run()
    (without,) = read_records(plain)
    scored = dict(recs["2.png"]["result"])
    del scored["trace"]
    assert {k: v for k, v in scored.items() if k != "source"} == \
        {k: v for k, v in without["result"].items() if k != "source"}


def test_a_retry_under_other_settings_is_refused_and_changes_nothing(config: Config, folder: Path,
                                                                     tmp_path: Path) -> None:
    from image2prompt.batch.records import OutputError
    from image2prompt.batch.retry import read_run

    out = tmp_path / "out.jsonl"
    assert job(config, [folder / "garbage.png"], out).run().failed == 1
    run = read_run(out)  # what the retry needs is kept beside the failure list
    assert run is not None and SearchSettings.from_dict(run["settings"]) == FAST
    assert run["clip"] == config.clip_models and run["caption"] == "x"
    before = (out.read_bytes(), failure_manifest_path(out).read_bytes())
    with pytest.raises(OutputError, match="ran with other settings or models"):
        job(config, [folder / "garbage.png"], out, settings=FAST.replace(max_flavors=5), retry_failed=True).run()
    assert (out.read_bytes(), failure_manifest_path(out).read_bytes()) == before
