"""``image2prompt batch``: options, outputs, exit status, and resuming after kill -9 (a real process)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from image2prompt.batch.records import read_records
from image2prompt.cli.main import cli
from tests.conftest import make_images


@pytest.fixture
def model_args(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    emb = tmp_path_factory.getbasetemp() / "batch-cli-emb"  # shared: the vocabulary is embedded once
    return ["--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption", "x",
            "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(emb), "--mode", "fast"]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for i, im in enumerate(make_images(3)):
        im.save(d / f"{i}.png")
    (d / "bad.png").write_bytes(b"garbage")
    return d


def test_batch_jsonl_with_sidecars_and_exit_status(folder: Path, tmp_path: Path, model_args: list[str]) -> None:
    out = tmp_path / "out.jsonl"
    (folder / "1.txt").write_text("1girl, x\n", encoding="utf-8")
    result = invoke("batch", folder, "-o", out, *model_args, "--sidecar", "--on-existing", "append",
                    "--dedupe", "--prefix", "sks", "--store-scores", "2")
    assert result.exit_code == 1, result.output
    assert "error: " in result.stderr and "bad.png" in result.stderr
    assert "3 done" in result.stderr and "1 failed" in result.stderr
    recs = {Path(r["source"]).name: r for r in read_records(out)}
    assert sorted(recs) == ["0.png", "1.png", "2.png", "bad.png"]
    assert all(recs[n]["ok"] and recs[n]["result"]["trace"]["top"] for n in ("0.png", "1.png", "2.png"))
    assert (folder / "0.txt").read_text(encoding="utf-8").startswith("sks, x, ")
    assert (folder / "1.txt").read_text(encoding="utf-8").startswith("sks, 1girl, x, ")  # "x" deduped, sks first
    assert (tmp_path / "out.jsonl.failed.txt").read_text(encoding="utf-8") == f"{folder / 'bad.png'}\n"
    again = invoke("batch", folder, "-o", out, *model_args, "--sidecar", "--on-existing", "append",
                   "--dedupe", "--prefix", "sks", "--store-scores", "2")
    assert again.exit_code == 0, again.output  # the failure is recorded: done
    assert "4 already done" in again.stderr
    assert (folder / "1.txt").read_text(encoding="utf-8").count("sks") == 1


def test_batch_progress_lines_when_not_a_terminal(folder: Path, tmp_path: Path, model_args: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["image2prompt.cli.batch"], "_PROGRESS_EVERY", 0.0)
    result = invoke("batch", folder / "0.png", folder / "1.png", "-o", tmp_path / "o.jsonl", *model_args)
    assert result.exit_code == 0
    assert "image2prompt: 2 images: 2 done, 0 skipped, 0 failed" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"image2prompt: {tmp_path / 'o.jsonl'}: 2 inputs: 2 done")
    quiet = invoke("batch", folder / "2.png", "-o", tmp_path / "o.jsonl", *model_args, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


@pytest.mark.parametrize("name,fmt", [("out.csv", None), ("out.data", "parquet")])
def test_batch_csv_and_parquet(folder: Path, tmp_path: Path, model_args: list[str], name: str,
                               fmt: str | None) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / name
    extra = ["--format", fmt] if fmt else []
    assert invoke("batch", folder / "0.png", folder / "bad.png", "-o", out, *model_args, *extra).exit_code == 1
    rows = list(read_records(out, fmt))
    assert [(Path(r["source"]).name, r["ok"]) for r in sorted(rows, key=lambda r: r["source"])] == [
        ("0.png", True), ("bad.png", False)]
    ok = next(r for r in rows if r["ok"])
    assert ok["prompt"].startswith("x") and isinstance(ok["similarity"], float) and json.loads(ok["phrases"])


@pytest.mark.parametrize("args,message", [
    (["--dedupe", "--sidecar"], "--dedupe needs --on-existing append or prepend"),
    (["--prefix", "sks"], "need --sidecar"),
    (["--sidecar", "some/folder"], "is not a file extension"),
])
def test_batch_usage_errors(folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("batch", folder, "-o", tmp_path / "o.jsonl", *args)
    assert result.exit_code == 2 and message in result.output


def test_batch_output_of_unknown_format_is_one_line(folder: Path, tmp_path: Path, model_args: list[str]) -> None:
    result = invoke("batch", folder, "-o", tmp_path / "o.txt", *model_args)
    assert result.exit_code == 2 and "use .jsonl, .csv or .parquet" in result.stderr  # a usage error
    assert "Traceback" not in result.output


# --- kill -9 in the middle of a run, twice, then a full run --------------------------------------


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _run_and_kill(cmd: list[str], out: Path, env: dict[str, str], cwd: Path, rng: random.Random,
                  at_least: int) -> str:
    """Start the command, wait until ``out`` has more than ``at_least`` lines (or a few seconds), then
    wait a random moment more and kill it with SIGKILL. Returns what happened."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and _lines(out) <= at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            return f"exited by itself ({proc.returncode})"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return f"killed at {_lines(out)} lines"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_9_twice_then_resume_gives_one_record_per_image(tmp_path: Path, tiny_open_clip: Path,
                                                            small_vocab_dir: Path) -> None:
    seed = int(os.environ.get("BATCH_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    good = []
    for i, im in enumerate(make_images(36, size=40)):
        p = data / ("sub" if i % 3 == 0 else "") / f"img{i:02d}.png"
        im.save(p)
        good.append(p)
    for k in (1, 2):  # identical images under other names: computed once, a record each
        shutil.copy(good[k], data / f"copy{k}.png")
        good.append(data / f"copy{k}.png")
    png = good[5].read_bytes()
    broken = {"empty.png": b"", "garbage.jpg": os.urandom(300), "truncated.png": png[: len(png) // 2],
              "zeros.webp": b"\x00" * 64}
    for name, blob in broken.items():
        (data / name).write_bytes(blob)
    out = tmp_path / "out" / "captions.jsonl"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "image2prompt", "batch", str(data), "-o", str(out), "--batch-size", "2",
           "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption", "x",
           "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(tmp_path / "emb"),
           "--mode", "fast", "-q"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    what = [_run_and_kill(cmd, out, env, tmp_path, rng, 0)]
    what.append(_run_and_kill(cmd, out, env, tmp_path, rng, _lines(out) + 1))
    note = f"seed {seed}: {what}"
    print(note)  # shown with -s, and with a failure
    before = [ln for ln in out.read_bytes().split(b"\n")[:-1]]  # whole lines: what the rerun keeps
    if out.read_bytes().endswith(b"\n"):  # the kill fell between two lines: tear one by hand
        with open(out, "ab") as f:
            f.write(b'{"source": "' + str(data).encode() + b'/img0')
    final = subprocess.run(cmd[:-1], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert final.returncode in (0, 1), (note, final.stderr)
    assert "Traceback" not in final.stderr, note
    assert final.stderr.count("torn last line") == 1, (note, final.stderr)
    assert f"{len(before)} already done" in final.stderr, (note, final.stderr)

    raw = out.read_bytes()
    assert raw.endswith(b"\n"), note
    records = [json.loads(line) for line in raw.decode("utf-8").splitlines()]  # every line parses
    counts = Counter(r["source"] for r in records)
    expected = {str(p) for p in good} | {str(data / n) for n in broken}
    assert set(counts) == expected and set(counts.values()) == {1}, (note, counts)
    by_name = {Path(r["source"]).name: r for r in records}
    for name in broken:
        assert not by_name[name]["ok"] and name in by_name[name]["error"], (note, by_name[name])
    for p in good:
        assert by_name[p.name]["ok"], (note, by_name[p.name])
    assert by_name["copy1.png"]["result"]["prompt"] == by_name["img01.png"]["result"]["prompt"]
    assert len({r["fingerprint"] for r in records}) == 1
    manifest = (out.parent / "captions.jsonl.failed.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(Path(m).name for m in manifest) == sorted(broken), (note, manifest)

    # and once more: nothing left to do, exit status 0
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and out.read_bytes() == raw, (note, done.stderr)


def _listed(manifest: Path) -> list[str]:
    return manifest.read_text(encoding="utf-8").splitlines()


def test_retry_failed_as_the_readme_says_retries_with_the_runs_own_settings(
        folder: Path, tmp_path: Path, model_args: list[str]) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image_path,caption\n{folder / '0.png'},a\n,b\n", encoding="utf-8")
    out = tmp_path / "captions.jsonl"
    listed = tmp_path / "captions.jsonl.failed.txt"
    first = invoke("batch", folder, manifest, "-o", out, *model_args, "--sidecar", ".caption", "--prefix", "sks")
    assert first.exit_code == 1, first.output
    (fp,) = {r["fingerprint"] for r in read_records(out)}
    errors = {r["source"]: r["error"] for r in read_records(out) if not r["ok"]}
    assert errors == {f"{manifest}:3": f"{manifest}:3: empty 'image_path' cell",
                      str(folder / "bad.png"): f"{folder / 'bad.png'}: not an image or unsupported format"}
    # the README's command, with none of the first run's options: still failing, with the same errors
    again = invoke("batch", listed, "-o", out, "--retry-failed")
    assert again.exit_code == 1, again.output
    assert {r["fingerprint"] for r in read_records(out)} == {fp}
    assert {r["source"]: r["error"] for r in read_records(out) if not r["ok"]} == errors
    assert _listed(listed) == [f"{manifest}:3", str(folder / "bad.png")]
    # an option that says otherwise is refused, in one line that names the difference
    other = invoke("batch", listed, "-o", out, "--retry-failed", "--mode", "best")
    assert other.exit_code == 1 and other.stderr.count("\n") == 1
    assert "ran with --mode fast, not --mode best" in other.stderr
    # fixed inputs: done with the first run's settings, models and caption files
    make_images(4)[3].save(folder / "bad.png", format="PNG")
    manifest.write_text(f"image_path,caption\n{folder / '0.png'},a\n{folder / '1.png'},b\n", encoding="utf-8")
    fixed = invoke("batch", listed, "-o", out, "--retry-failed")
    assert fixed.exit_code == 0, fixed.output
    recs = list(read_records(out))
    assert {r["fingerprint"] for r in recs} == {fp} and all(r["ok"] for r in recs)
    assert sum(Path(r["source"]).name == "bad.png" for r in recs) == 1
    assert (folder / "bad.caption").read_text(encoding="utf-8").startswith("sks, x")
    assert _listed(listed) == []


def test_retry_failed_of_a_subset_keeps_the_other_failures(folder: Path, tmp_path: Path,
                                                           model_args: list[str]) -> None:
    (folder / "worse.png").write_bytes(b"")
    out = tmp_path / "o.jsonl"
    assert invoke("batch", folder, "-o", out, *model_args).exit_code == 1
    listed = _listed(tmp_path / "o.jsonl.failed.txt")
    assert sorted(listed) == [str(folder / "bad.png"), str(folder / "worse.png")]
    retry = invoke("batch", folder / "bad.png", "-o", out, "--retry-failed")
    assert retry.exit_code == 1, retry.output
    assert sorted(_listed(tmp_path / "o.jsonl.failed.txt")) == sorted(listed)
    assert sorted(r["error"] for r in read_records(out) if not r["ok"]) == [
        f"{folder / 'bad.png'}: not an image or unsupported format", f"{folder / 'worse.png'}: empty file"]


def test_retry_failed_takes_caption_model_auto_as_the_model_it_picks(folder: Path, tmp_path: Path,
                                                                      model_args: list[str]) -> None:
    out = tmp_path / "o.jsonl"
    assert invoke("batch", folder, "-o", out, *model_args).exit_code == 1
    kept = tmp_path / "o.jsonl.failed.json"
    run = json.loads(kept.read_text(encoding="utf-8"))
    run.update(captioner="blip-large", caption=None)  # as a run with the default captioner keeps it
    kept.write_text(json.dumps(run), encoding="utf-8")
    listed = tmp_path / "o.jsonl.failed.txt"
    other = invoke("batch", listed, "-o", out, "--retry-failed", "--caption-model", "blip-base")
    assert "ran with --caption-model blip-large, not --caption-model blip-base" in other.stderr
    same = invoke("batch", listed, "-o", out, "--retry-failed", "--caption-model", "auto")
    assert "--caption-model" not in same.stderr, same.stderr  # (the records' own fingerprint is another check)


def test_captions_from_a_manifest_column_and_webdataset_text_members(folder: Path, tmp_path: Path,
                                                                      model_args: list[str]) -> None:
    """--caption-column: re-rank captions a dataset already has, from a CSV column or KEY.txt members."""
    import tarfile

    args = [a for a in model_args if a not in ("--caption", "x")]  # no caption for every image
    manifest = folder / "m.csv"
    manifest.write_text("file,alt\n0.png,a cat on a mat\n1.png,\n", encoding="utf-8")
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        tf.add(folder / "2.png", arcname="k2.png")
        (tmp_path / "k2.txt").write_text("a dog in the snow\n", encoding="utf-8")
        tf.add(tmp_path / "k2.txt", arcname="k2.txt")
    out = tmp_path / "out.jsonl"
    result = invoke("batch", manifest, shard, "-o", out, *args, "--caption-column", "alt")
    assert result.exit_code == 1, result.output  # 1.png has no caption, and fast mode needs one
    recs = {Path(r["source"]).name: r for r in read_records(out)}
    assert recs["0.png"]["result"]["caption"] == "a cat on a mat"
    assert recs["0.png"]["result"]["prompt"].startswith("a cat on a mat")
    assert "fast mode needs a caption" in recs["1.png"]["error"]
    assert recs["k2.png"]["ok"] is False and "fast mode needs a caption" in recs["k2.png"]["error"]  # alt: no KEY.alt
    shard_out = tmp_path / "shard.jsonl"
    result = invoke("batch", shard, "-o", shard_out, *args, "--caption-column", "txt")
    assert result.exit_code == 0, result.output
    (rec,) = read_records(shard_out)
    assert rec["result"]["caption"] == "a dog in the snow"
    missing = invoke("batch", manifest, "-o", tmp_path / "o2.jsonl", *args, "--caption-column", "nope")
    assert missing.exit_code == 1 and "no caption column 'nope' (columns: 'file', 'alt')" in missing.stderr
    with_global = invoke("batch", manifest, "-o", tmp_path / "o3.jsonl", *model_args, "--caption-column", "alt")
    assert with_global.exit_code == 0, with_global.output  # --caption for the rows without their own
    got = {Path(r["source"]).name: r["result"]["caption"] for r in read_records(tmp_path / "o3.jsonl")}
    assert got == {"0.png": "a cat on a mat", "1.png": "x"}
