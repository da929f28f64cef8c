"""``image2prompt batch --ray``: the Ray Data pipeline on a real local Ray instance (2 CPUs).

One Ray instance for the module; tiny random-weight models; the actor pools at size 1.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from image2prompt.batch.engine import failure_manifest_path, run_batch  # noqa: E402
from image2prompt.batch.ray import (  # noqa: E402  # noqa: E402
    RAY_MISSING,
    RayMissingError,
    RayRunError,
    RunSummary,
    cluster,
    driver,
    run_on_ray,
    stages,
)
from image2prompt.batch.records import read_records  # noqa: E402
from image2prompt.batch.retry import read_run  # noqa: E402
from image2prompt.batch.sidecars import SidecarOptions  # noqa: E402
from image2prompt.errors import ModelLoadError, SettingsError  # noqa: E402
from image2prompt.interrogator import Config, Interrogator  # noqa: E402
from image2prompt.settings import SearchSettings  # noqa: E402
from tests.conftest import make_images  # noqa: E402

FAST = SearchSettings(mode="fast")
CAPTION = "x"
N_GOOD = 12


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of its own (own temp dir, small object store), offline and quiet."""
    env = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    saved = {k: os.environ.get(k) for k in [*env, "RAY_ADDRESS"]}
    os.environ.update(env)
    os.environ.pop("RAY_ADDRESS", None)  # never join somebody else's instance
    temp = tempfile.mkdtemp(prefix="i2p-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=256 * 1024 * 1024, _temp_dir=temp)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 small images (PNG, JPEG, WebP, two sizes) and 2 broken files."""
    d = tmp_path_factory.mktemp("ray-imgs")
    for i, img in enumerate(make_images(N_GOOD, size=40)):
        fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")][i % 3]
        img.save(d / f"img{i:02d}.{ext}", format=fmt)
    (d / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    (d / "empty.png").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, tiny_open_clip: Path, small_vocab_dir: Path) -> Config:
    cache = tmp_path_factory.mktemp("ray-cache")
    return Config(clip_model=f"local-dir:{tiny_open_clip}", caption_model=None, device="cpu",
                  cache_dir=str(cache), vocab=(str(small_vocab_dir),), download_cache=False)


@pytest.fixture(scope="module")
def expected(folder: Path, config: Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The single-process batch engine's records on the same inputs, by source."""
    out = tmp_path_factory.mktemp("engine") / "engine.jsonl"
    stats = run_batch([str(folder)], out, interrogator=lambda: Interrogator.load(config), config=config,
                      settings=FAST, caption=CAPTION, batch_size=4)
    assert (stats.done, stats.failed) == (N_GOOD, 2)
    return _by_source(list(read_records(out)))


def _run(inputs: list[Path], output: Path, config: Config, **kw: Any) -> RunSummary:
    return run_on_ray([str(i) for i in inputs], output=str(output), config=config, settings=FAST, caption=CAPTION,
                      batch_size=4, encode_actors=1, search_actors=1, num_cpus_per_actor=0.5, **kw)


def _by_source(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What must agree: source, content hash, fingerprint, ok, prompt (similarity to 1e-5) or error."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        assert r["source"] not in out, f"two records for {r['source']}"
        row = {"content_hash": r["content_hash"], "fingerprint": r["fingerprint"], "ok": r["ok"]}
        if r["ok"]:
            row.update(prompt=r["result"]["prompt"], similarity=r["result"]["similarity"],
                       caption=r["result"]["caption"])
            trace = r["result"].get("trace")
            if trace is not None:  # --store-scores: the top phrases per category, with scores
                row["top"] = {c: [(p["text"], p["score"]) for p in ps] for c, ps in trace["top"].items()}
        else:
            row["error"] = r["error"]
        out[r["source"]] = row
    return out


def _same(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> None:
    assert set(got) == set(want)
    for source in want:
        have, expect = dict(got[source]), dict(want[source])
        if expect["ok"]:
            assert have.pop("similarity") == pytest.approx(expect.pop("similarity"), abs=1e-5), source
            if "top" in expect:
                top, want_top = have.pop("top", None), expect.pop("top")
                assert top is not None and set(top) == set(want_top), source
                for c, phrases in want_top.items():
                    assert [t for t, _ in top[c]] == [t for t, _ in phrases], (source, c)
                    assert [v for _, v in top[c]] == pytest.approx([v for _, v in phrases], abs=1e-5), (source, c)
        assert have == expect, source


def test_ray_run_matches_the_batch_engine_and_resumes(ray_instance, folder, config, expected, tmp_path):
    output = tmp_path / "out.jsonl"
    seen: list[dict[str, Any]] = []
    lines: list[str] = []
    ticks: list[int] = []
    summary = _run([folder], output, config, on_record=seen.append, on_error=lines.append,
                   progress=lambda s: ticks.append(s.written))

    records = list(read_records(output))
    _same(_by_source(records), expected)
    # broken files are error records, one line naming the file
    errors = {r["source"]: r["error"] for r in records if not r["ok"]}
    assert set(errors) == {str(folder / "broken.jpg"), str(folder / "empty.png")}
    assert errors[str(folder / "empty.png")] == f"{folder / 'empty.png'}: empty file"
    assert errors[str(folder / "broken.jpg")].startswith(f"{folder / 'broken.jpg'}: ")
    assert all("\n" not in e for e in errors.values())
    assert (summary.seen, summary.done, summary.failed, summary.skipped) == (N_GOOD + 2, N_GOOD, 2, 0)
    assert summary.finished and summary.fingerprint == expected[str(folder / "img00.png")]["fingerprint"]
    assert len(seen) == len(records) and sorted(lines) == sorted(errors.values())
    assert ticks == [*range(1, len(records) + 1), len(records)]  # after each record, and at the end
    # the failure list, as the engine writes it
    assert sorted(failure_manifest_path(output).read_text().splitlines()) == sorted(errors)

    # a rerun skips everything done: no new records
    before = output.read_bytes()
    again = _run([folder], output, config)
    assert (again.seen, again.written, again.skipped) == (N_GOOD + 2, 0, N_GOOD + 2)
    assert output.read_bytes() == before

    # a new name for content already done gets the stored record, copied, without the models;
    # caption files are written for the records the run writes
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(folder / "img01.jpg", extra / "same-as-1.jpg")
    third = _run([folder, extra], output, config, sidecar=SidecarOptions())
    assert (third.written, third.copied, third.skipped) == (1, 1, N_GOOD + 2)
    new = list(read_records(output))[len(records):]
    assert len(new) == 1 and new[0]["source"] == str(extra / "same-as-1.jpg")
    want = expected[str(folder / "img01.jpg")]
    assert (new[0]["result"]["prompt"], new[0]["content_hash"]) == (want["prompt"], want["content_hash"])
    assert (extra / "same-as-1.txt").read_text(encoding="utf-8").strip() == want["prompt"]
    assert third.sidecars == {"written": 1}


def test_store_scores_and_the_kept_run_are_the_batch_engine_s(ray_instance, folder, config, expected, tmp_path):
    """--store-scores is an output option on Ray too: the search and fingerprint of a run without it,
    the top phrases scored after the search as the engine scores them; FILE.failed.json is the
    engine's, so --retry-failed of a Ray output retries with that run's settings and models."""
    engine_out = tmp_path / "engine.jsonl"
    stats = run_batch([str(folder)], engine_out, interrogator=lambda: Interrogator.load(config), config=config,
                      settings=FAST, caption=CAPTION, batch_size=4, store_scores=3)
    assert (stats.done, stats.failed) == (N_GOOD, 2)
    want = _by_source(list(read_records(engine_out)))
    assert all(len(r["top"]) >= 4 and all(len(v) == 3 for v in r["top"].values()) for r in want.values() if r["ok"])

    output = tmp_path / "out.jsonl"
    summary = _run([folder], output, config, store_scores=3)
    got = _by_source(list(read_records(output)))
    _same(got, want)  # the engine's records: prompts, fingerprints, errors and the top phrases
    _same({s: {k: v for k, v in r.items() if k != "top"} for s, r in got.items()}, expected)  # as without it
    assert summary.fingerprint == expected[str(folder / "img00.png")]["fingerprint"]
    assert sorted(failure_manifest_path(output).read_text().splitlines()) == \
        sorted(failure_manifest_path(engine_out).read_text().splitlines())
    kept = read_run(output)
    assert kept is not None and kept == read_run(engine_out)
    assert SearchSettings.from_dict(kept["settings"]) == FAST and kept["outputs"]["store_scores"] == 3
    assert (kept["fingerprint"], kept["caption"]) == (summary.fingerprint, CAPTION)

    # a retry through the CLI, with none of the first run's options: its settings, not the defaults
    from click.testing import CliRunner

    from image2prompt.cli.main import cli

    args = ["batch", str(folder), "--output", str(output), "--ray", "--retry-failed", "--cpus-per-actor", "0.5",
            "--device", "cpu", "--cache-dir", config.cache_dir, "--batch-size", "4"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the two broken files failed again
    assert "Traceback" not in result.output
    assert f"{N_GOOD + 2} inputs: 0 done, 0 copied from identical images, {N_GOOD} already done, 2 failed" \
        in result.output
    _same(_by_source(list(read_records(output))), want)  # the same records: retried under the kept fingerprint
    assert read_run(output) == kept


def test_run_identity_from_a_ray_task(ray_instance, config, expected, folder, monkeypatch):
    """Where the driver cannot tell the model identity, a Ray task loads the models for it."""
    monkeypatch.setattr(driver.ModelIdentity, "of_config", classmethod(lambda cls, config: None))
    identity = driver.run_identity(ray, config, 0.5)
    assert identity.fingerprint(FAST) == expected[str(folder / "img00.png")]["fingerprint"]


def test_a_model_problem_stops_the_run_with_its_own_one_line(ray_instance, folder, config, tmp_path):
    missing = tmp_path / "no-model-here"
    bad = replace(config, clip_model=f"local-dir:{missing}")
    with pytest.raises(ModelLoadError, match="folder .* not found") as info:
        _run([folder], tmp_path / "out.jsonl", bad)
    assert "\n" not in str(info.value)
    assert list(read_records(tmp_path / "out.jsonl")) == []


def test_arguments_are_checked_before_ray_starts(config, tmp_path):
    with pytest.raises(SettingsError, match="encode_actors"):
        run_on_ray(["x"], output=str(tmp_path / "o.jsonl"), config=config, settings=FAST, encode_actors=0)
    with pytest.raises(SettingsError, match="num_gpus_per_actor"):
        run_on_ray(["x"], output=str(tmp_path / "o.jsonl"), config=config, settings=FAST, num_gpus_per_actor=-1)
    with pytest.raises(SettingsError, match="GPUs on the encode actors"):
        run_on_ray(["x"], output=str(tmp_path / "o.jsonl"), config=Config(device="cuda"), settings=FAST)


def test_missing_ray_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RayMissingError) as info:
        cluster._import_ray()
    assert str(info.value) == RAY_MISSING == "--ray needs Ray Data: pip install 'image2prompt[ray]'"


def test_driver_errors_are_one_line():
    class Outer(Exception):
        pass

    try:
        try:
            raise ValueError("boom\nmore")
        except ValueError as inner:
            raise Outer("ray::MapWorker(...).submit() (pid=1)\ntraceback") from inner
    except Outer as err:
        mapped = cluster._driver_error(ray, err)
    assert isinstance(mapped, RayRunError)
    assert str(mapped) == "the Ray run stopped: ValueError: boom"
    ours = ModelLoadError("clip: folder not found\nFailed to apply UDF transform after 1/1 attempts")
    assert cluster._driver_error(ray, ours) is ours and str(ours) == "clip: folder not found"


def test_done_set_lookup():
    done = stages.DoneSet(
        keys=np.array(sorted(stages._digest(k) for k in ("a" * 64, "src/x.png")), "S32"),
        sources=np.array([stages._digest("src/y.png")], "S32"))
    assert done.has_key("a" * 64) and done.has_key("src/x.png") and not done.has_key("b" * 64)
    assert done.has_source("src/y.png") and not done.has_source("src/x.png")
    assert done.size == 2


def test_the_cli_runs_on_ray_with_the_same_records(ray_instance, folder, config, expected, tmp_path,
                                                   tiny_open_clip, small_vocab_dir):
    from click.testing import CliRunner

    from image2prompt.cli.main import cli

    output = tmp_path / "cli.jsonl"
    args = ["batch", str(folder), "--output", str(output), "--ray", "--cpus-per-actor", "0.5",
            "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption", CAPTION,
            "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", config.cache_dir,
            "--mode", "fast", "--batch-size", "4"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the two broken files failed
    assert "Traceback" not in result.output
    _same(_by_source(list(read_records(output))), expected)


def _fit(cpus: float, gpus: float = 0, largest: dict[str, float] | None = None, **asked: Any) -> Any:
    kw: dict[str, Any] = {"encode_actors": 1, "search_actors": 1, "num_cpus_per_actor": 1, "num_gpus_per_actor": 0,
                          "num_gpus_per_search_actor": 0}
    kw.update(asked)
    total = {"CPU": cpus, "GPU": gpus}
    return cluster._fit(total, largest or total, **kw)


def test_the_stages_are_sized_to_fit_the_cluster():
    """Actors hold their CPUs for the whole run and the decode tasks need a CPU beside them
    (issue 28: the defaults took both CPUs of a 2-CPU cluster and the run waited for ever)."""
    assert _fit(16) == cluster._Fit(1, 1.0, None)  # fits: as asked
    assert _fit(2, num_cpus_per_actor=0.5) == cluster._Fit(0.5, 1.0, None)
    two = _fit(2)
    assert (two.actor_cpus, two.decode_cpus) == (0.5, 1.0)
    assert two.note == ("--ray: 1 encode and 1 search actor at 1 CPU each, plus 1 for the decode tasks, need 3 CPUs, "
                        "the Ray cluster has 2: running each actor at 0.5 CPU (--cpus-per-actor 0.5)")
    one = _fit(1, search_actors=2)  # one CPU: the decode tasks get half of it
    assert (one.actor_cpus, one.decode_cpus) == (0.16, 0.5)
    assert 3 * one.actor_cpus + one.decode_cpus <= 1
    big = _fit(8, largest={"CPU": 4}, num_cpus_per_actor=6)  # no node has 6 CPUs
    assert big.actor_cpus == 3.5 and "(at most 4 on a node)" in big.note


def test_stages_that_cannot_fit_stop_with_one_line_naming_the_flag():
    with pytest.raises(SettingsError) as info:
        _fit(2, encode_actors=4, search_actors=8)
    assert str(info.value) == ("--ray: 4 encode and 8 search actors at 1 CPU each, plus 1 for the decode tasks, cannot "
                               "fit in the Ray cluster's 2 CPUs (even at 0.1 CPU each they need 2.2): lower "
                               "--search-actors or --encode-actors")
    with pytest.raises(SettingsError) as info:
        _fit(8, gpus=1, encode_actors=2, num_gpus_per_actor=1)
    assert str(info.value) == ("--ray: 2 encode actors at 1 GPU need 2 GPUs, the Ray cluster has 1: lower "
                               "--encode-actors or --gpus-per-actor")
    with pytest.raises(SettingsError, match="need 0.5 GPUs, the Ray cluster has 0: lower --encode-actors or --gpus-per-actor"):
        _fit(8, num_gpus_per_actor=0.5)
    with pytest.raises(SettingsError, match="largest node of the Ray cluster has 2: lower --gpus-per-actor"):
        _fit(8, gpus=4, largest={"CPU": 4, "GPU": 2}, num_gpus_per_actor=3)
    with pytest.raises(SettingsError, match="search actors at 1 GPU need 2.5 GPUs.*num_gpus_per_search_actor"):
        _fit(8, gpus=2, search_actors=2, num_gpus_per_actor=0.5, num_gpus_per_search_actor=1)
    with pytest.raises(SettingsError, match="no CPUs"):
        _fit(0)


def test_sizing_reads_the_real_cluster(ray_instance):
    fit = cluster._fit_cluster(ray_instance, encode_actors=1, search_actors=1, num_cpus_per_actor=1,
                                   num_gpus_per_actor=0, num_gpus_per_search_actor=0)
    assert (fit.actor_cpus, fit.decode_cpus) == (0.5, 1.0) and "the Ray cluster has 2" in fit.note
    with pytest.raises(SettingsError, match="the Ray cluster has 0: lower --encode-actors or --gpus-per-actor"):
        cluster._fit_cluster(ray_instance, encode_actors=1, search_actors=1, num_cpus_per_actor=0.5,
                                 num_gpus_per_actor=1, num_gpus_per_search_actor=0)


def test_a_token_ray_will_not_send_is_found(tmp_path):
    """Ray sends its token to an explicit address only with RAY_AUTH_MODE=token; a cluster with
    token auth refuses the driver for 20 s, then 'failed to connect' (issue 28)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    unsent = cluster._unsent_token
    assert unsent("HEAD:6379", {}, home) is None  # no token anywhere
    (home / ".ray" / "auth_token").write_text("t" * 32)
    assert unsent("HEAD:6379", {}, home) == str(home / ".ray" / "auth_token")
    assert unsent("ray://HEAD:10001", {}, home) == str(home / ".ray" / "auth_token")
    assert unsent("auto", {}, home) is None  # Ray enables the token itself for "auto"
    assert unsent("HEAD:6379", {"RAY_AUTH_MODE": "token"}, home) is None  # it is sent
    assert unsent("HEAD:6379", {"RAY_AUTH_MODE": "disabled"}, home) is None  # the user's choice
    assert unsent("HEAD:6379", {"RAY_AUTH_TOKEN": "abc"}, tmp_path) == "RAY_AUTH_TOKEN"
    other = tmp_path / "token"
    other.write_text("t" * 32)
    assert unsent("HEAD:6379", {"RAY_AUTH_TOKEN_PATH": str(other)}, tmp_path) == str(other)
    assert unsent("HEAD:6379", {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}, tmp_path) is None
    line = cluster._token_auth_message("HEAD:6379", "/home/u/.ray/auth_token")
    assert "\n" not in line and "RAY_AUTH_MODE=token" in line and "token authentication" in line


def test_the_probe_leaves_other_addresses_to_ray():
    # not a GCS address: no probe (ray.init reports what it finds)
    assert not cluster._refused_for_token("ray://HEAD:10001")
    assert not cluster._refused_for_token("HEAD")


@pytest.fixture(scope="module")
def captioned(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest with its own caption column: an image listed twice under two names (identical bytes)
    with the same caption, the same image again with another caption, and a row with no caption."""
    d = tmp_path_factory.mktemp("captioned")
    for name in ("a.png", "a-again.png"):
        shutil.copyfile(folder / "img00.png", d / name)
    shutil.copyfile(folder / "img01.jpg", d / "b.jpg")
    shutil.copyfile(folder / "img02.webp", d / "c.webp")
    (d / "m.csv").write_text("file,alt\na.png,a red square\na-again.png,a red square\nb.jpg,a blue thing\n"
                             "c.webp,\n", encoding="utf-8")
    shutil.copyfile(d / "m.csv", d / "m2.csv")
    with open(d / "m2.csv", "a", encoding="utf-8") as f:
        f.write("a.png,another caption\n")
    return d


def test_ray_and_the_engine_dedupe_alike_and_take_captions_from_a_column(ray_instance, captioned, config,
                                                                          tmp_path):
    manifest = str(captioned / "m2.csv")
    engine_out, ray_out = tmp_path / "engine.jsonl", tmp_path / "ray.jsonl"
    stats = run_batch([manifest], engine_out, interrogator=lambda: Interrogator.load(config), config=config,
                      settings=FAST, caption_column="alt", batch_size=4)
    summary = run_on_ray([manifest], output=str(ray_out), config=config, settings=FAST, caption_column="alt",
                         batch_size=4, encode_actors=1, search_actors=1, num_cpus_per_actor=0.5)
    for s in (stats, summary):  # a.png twice (another caption the 2nd time), a-again.png a copy, c.webp no caption
        assert (s.seen, s.done, s.copied, s.failed) == (5, 3, 1, 1), s.summary()
    def keyed(out: Path) -> dict[tuple[str, str], dict[str, Any]]:  # a.png has two records: two captions
        return {(r["source"], r["content_hash"]): row for r in read_records(out)
                for row in _by_source([r]).values()}

    want, got = keyed(engine_out), keyed(ray_out)
    assert len(want) == 5 and set(got) == set(want)
    for key, expect in want.items():
        have = got[key]
        if expect["ok"]:
            assert have.pop("similarity") == pytest.approx(expect.pop("similarity"), abs=1e-5), key
        assert have == expect, key
    records = list(read_records(engine_out))
    by_caption = {(r["source"], r["result"]["caption"]) if r["ok"] else (r["source"], None): r for r in records}
    a = str(captioned / "a.png")
    assert (a, "a red square") in by_caption and (a, "another caption") in by_caption  # computed twice
    assert by_caption[(a, "a red square")]["content_hash"] != by_caption[(a, "another caption")]["content_hash"]
    again = by_caption[(str(captioned / "a-again.png"), "a red square")]  # the copy of a.png's first record
    assert again["content_hash"] == by_caption[(a, "a red square")]["content_hash"]
    assert again["result"]["prompt"] == by_caption[(a, "a red square")]["result"]["prompt"]
    (missing,) = [r for r in records if not r["ok"]]
    assert missing["source"] == str(captioned / "c.webp")
    assert "fast mode needs a caption" in missing["error"] and "\n" not in missing["error"]


def test_a_ray_retry_refuses_other_settings_and_keeps_the_errors_it_does_not_reach(ray_instance, folder, config,
                                                                                    tmp_path):
    from image2prompt.batch.records import OutputError

    output = tmp_path / "out.jsonl"
    first = _run([folder], output, config)
    assert first.failed == 2
    errors = {r["source"]: r["error"] for r in read_records(output) if not r["ok"]}
    with pytest.raises(OutputError, match="ran with other settings or models"):
        run_on_ray([str(folder / "broken.jpg")], output=str(output), config=config, settings=FAST.replace(max_flavors=7),
                   caption=CAPTION, retry_failed=True, num_cpus_per_actor=0.5)
    retry = _run([folder / "broken.jpg"], output, config, retry_failed=True)  # a subset of the failed inputs
    assert retry.failed == 1
    after = {r["source"]: r["error"] for r in read_records(output) if not r["ok"]}
    assert after == errors  # empty.png was not reached: its error record is written back, with its own error
    listed = failure_manifest_path(output).read_text(encoding="utf-8").splitlines()
    assert sorted(os.path.normpath(os.path.join(output.parent, line)) for line in listed) == sorted(errors)


def test_ray_actors_caption_through_a_caption_server(ray_instance, folder, config, tmp_path, monkeypatch):
    """--caption-model openai: on Ray: each encode actor asks the server with its own concurrency."""
    from tests.support.fake_openai import FakeOpenAI, fake_openai

    with fake_openai(FakeOpenAI(), monkeypatch=monkeypatch) as server:
        remote = replace(config, caption_model="openai:fake-vlm", caption_endpoint=server.url, caption_concurrency=2)
        summary = run_on_ray([str(folder / f"img0{i}.png") for i in (0, 3)], output=str(tmp_path / "o.jsonl"),
                             config=remote, settings=FAST, batch_size=4, num_cpus_per_actor=0.5)
    assert (summary.done, summary.failed) == (2, 0), summary.summary()
    captions = sorted(r["result"]["caption"] for r in read_records(tmp_path / "o.jsonl"))
    assert len(captions) == 2 and all(re.fullmatch(r"an image \d+ pixels wide", c) for c in captions)  # the server's
    assert all(r.headers.get("authorization") is None for r in server.requests)  # no key set: none sent
