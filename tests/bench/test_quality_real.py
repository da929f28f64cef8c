"""bench/quality_real.py, the real-weights quality protocol, run on the toy world (true prompts known).

Random-weight tiny models check the protocol's plumbing (JSON schema, intervals, bad
files, warnings, exit codes); the trained toy model, where it exists, checks that the
reference row means something.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bench.quality_real as qr
from bench.toyworld.world import render, sample_scenes, true_prompt
from tests.support import tiny_models

REPO_ROOT = Path(__file__).resolve().parents[2]
TOY_VOCAB = REPO_ROOT / "bench" / "toyworld" / "vocab"
#: the trained toy CLIP; QUALITY_REAL_TOY_MODEL points elsewhere (a checkpoint being trained)
TOY_MODEL = Path(os.environ.get("QUALITY_REAL_TOY_MODEL", REPO_ROOT / "bench" / "toyworld" / "model"))
N_IMAGES = 8


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = qr.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def write_pairs(folder: Path, n: int = N_IMAGES, seed: int = 11, broken: bool = True) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    prompts = []
    for k, scene in enumerate(sample_scenes(n, seed)):
        render(scene).save(folder / f"img{k:02d}.png")
        prompts.append(true_prompt(scene))
        (folder / f"img{k:02d}.txt").write_text(prompts[-1] + "\n", encoding="utf-8")
    if broken:  # sorts between the good ones
        (folder / "img03b.png").write_bytes(b"this is not a PNG file")
        (folder / "img03b.txt").write_text("a broken image, trending on artstation\n", encoding="utf-8")
    return prompts


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy machine extra threads only contend."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    write_pairs(d)
    return d


@pytest.fixture(scope="module")
def second_open_clip(models_dir: Path) -> Path:
    """Another random tiny model (seed 1): the held-out evaluator next to tiny_open_clip (seed 0)."""
    return tiny_models.make_open_clip_dir(models_dir / "tiny-open-clip-seed1", seed=1)


def base_args(folder: Path, clip: Path, eval_clip: Path, json_out: Path, modes: str = "fast,best") -> list[Any]:
    return [folder, "--clip", f"local-dir:{clip}", "--eval-clip", f"local-dir:{eval_clip}",
            "--caption-model", "none", "--caption-from-prompt", "--vocab", TOY_VOCAB, "--modes", modes,
            "--json", json_out, "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_run(pairs_dir: Path, tiny_open_clip: Path, second_open_clip: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("report") / "report.json"
    rc, stdout, stderr = run(base_args(pairs_dir, tiny_open_clip, second_open_clip, out))
    assert rc == 0, stderr
    return {"report": json.loads(out.read_text()), "stdout": stdout, "stderr": stderr}


def check_interval(v: dict[str, Any], lo: float = -1.0, hi: float = 1.0) -> None:
    assert v["n"] > 0
    assert lo <= v["low"] <= v["stat"] <= v["high"] <= hi, v


# -- pure helpers --------------------------------------------------------------------------
def test_caption_from_prompt_and_derangement() -> None:
    assert qr.caption_from_prompt("a red circle on a grey background, oil painting, by X") == \
        "a red circle on a grey background"
    assert qr.caption_from_prompt("no comma here") == "no comma here"
    assert qr.caption_from_prompt(", leading comma") == ", leading comma"
    assert qr.derangement(1) is None
    for n in (2, 3, 8, 50):
        d = qr.derangement(n)
        assert sorted(d) == list(range(n)) and all(d[i] != i for i in range(n))
    assert qr.derangement(8) == qr.derangement(8)  # seeded


def test_pairs_file_jsonl_and_csv(tmp_path: Path, tiny_open_clip: Path, second_open_clip: Path) -> None:
    prompts = write_pairs(tmp_path / "imgs", n=3, broken=False)
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"image": f"imgs/img{k:02d}.png", "prompt": p})
                                                for k, p in enumerate(prompts)) + "\n\n")
    (tmp_path / "p.csv").write_text("image,prompt\n" + "".join(f'imgs/img{k:02d}.png,"{p}"\n'
                                                               for k, p in enumerate(prompts)))
    for name in ("p.jsonl", "p.csv"):
        got = qr.read_pairs_file(tmp_path / name)
        assert [g.prompt for g in got] == prompts
        assert [g.image for g in got] == [(tmp_path / "imgs" / f"img{k:02d}.png").resolve() for k in range(3)]
    found = qr.discover_pairs(tmp_path / "imgs", log=lambda m: None)
    assert [p.prompt for p in found] == prompts
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(qr.Failure, match="jsonl or .csv"):
        qr.read_pairs_file(tmp_path / "p.txt")
    # and through the command line (fast mode: one text batch per image)
    args = base_args(tmp_path / "imgs", tiny_open_clip, second_open_clip, tmp_path / "p.json", modes="fast")
    rc, _, stderr = run(["--pairs", tmp_path / "p.jsonl", *args[1:], "--limit", "2"])
    assert rc == 0, stderr
    rep = json.loads((tmp_path / "p.json").read_text())
    assert rep["images"] == {"found": 3, "used": 2, "skipped": []}
    assert [r["true_prompt"] for r in rep["per_image"]] == prompts[:2]


# -- random tiny models: the protocol's plumbing ------------------------------------------
def test_report_schema_and_intervals(tiny_run: dict[str, Any]) -> None:
    rep = tiny_run["report"]
    cfg = rep["config"]
    assert cfg["held_out"] is True and cfg["caption_from_prompt"] is True and cfg["caption_model"] is None
    assert cfg["modes"] == ["fast", "best"] and cfg["sentence_model"] is None
    assert "evaluator CLIP" in cfg["text_similarity_clip"]
    assert rep["images"]["used"] == N_IMAGES and rep["images"]["found"] == N_IMAGES + 1

    ref = rep["reference"]
    assert set(ref) == {"true", "shuffled", "caption"}
    check_interval(ref["true"]["eval_similarity"])
    assert ref["true"]["ratio_to_true"]["stat"] == pytest.approx(1.0)
    assert ref["true"]["text_similarity_clip"]["stat"] == pytest.approx(1.0, abs=1e-5)  # itself
    check_interval(ref["shuffled"]["eval_similarity"])
    check_interval(ref["shuffled"]["true_minus_shuffled"], -2.0, 2.0)
    check_interval(ref["caption"]["eval_similarity"])
    assert 0 < ref["true"]["tokens"]["stat"]

    for mode in ("fast", "best"):
        m = rep["modes"][mode]
        check_interval(m["eval_similarity"])
        check_interval(m["search_similarity"])
        check_interval(m["text_similarity_clip"])
        assert m["ratio_to_true"]["low"] <= m["ratio_to_true"]["stat"] <= m["ratio_to_true"]["high"]
        check_interval(m["tokens"], 1, 77)
        assert m["seconds_per_image"] > 0
        assert m["text_similarity_sentence"] is None

    assert len(rep["per_image"]) == N_IMAGES
    for row in rep["per_image"]:
        assert Path(row["image"]).name != "img03b.png"
        assert row["caption"] == qr.caption_from_prompt(row["true_prompt"])
        assert row["shuffled_from"] != row["image"]
        assert -1 <= row["eval_similarity_true"] <= 1
        for mode in ("fast", "best"):
            r = row["modes"][mode]
            assert r["prompt"] and 0 < r["tokens"] <= 77
            assert -1 <= r["text_similarity_clip"] <= 1 and -1 <= r["eval_similarity"] <= 1
    # the per-image figures are what the summary summarises
    sims = [row["modes"]["best"]["eval_similarity"] for row in rep["per_image"]]
    assert rep["modes"]["best"]["eval_similarity"]["stat"] == pytest.approx(np.mean(sims))

    table = tiny_run["stdout"]
    assert "| row | eval similarity |" in table
    assert "true prompt (reference)" in table and "**fast**" in table and "**best**" in table


def test_bad_image_is_reported_and_skipped(tiny_run: dict[str, Any]) -> None:
    skipped = tiny_run["report"]["images"]["skipped"]
    assert [Path(s["image"]).name for s in skipped] == ["img03b.png"] and skipped[0]["error"]
    assert "img03b.png" in tiny_run["stderr"] and "skipped" in tiny_run["stderr"]
    assert "1 skipped" in tiny_run["stdout"]
    assert "warning" not in tiny_run["stderr"]  # the evaluator is held out here


def test_same_model_warns(pairs_dir: Path, tiny_open_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "same.json"
    rc, stdout, stderr = run(base_args(pairs_dir, tiny_open_clip, tiny_open_clip, out, modes="fast")
                             + ["--limit", "2"])
    assert rc == 0, stderr
    assert "same model" in stderr and "not held out" in stderr
    rep = json.loads(out.read_text())
    assert rep["config"]["held_out"] is False and rep["images"]["used"] == 2
    assert "NOT held out" in stdout


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is not None,
                    reason="sentence-transformers is installed: the fallback is not taken")
def test_sentence_model_without_the_package_falls_back(pairs_dir: Path, tiny_open_clip: Path,
                                                       second_open_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    rc, _, stderr = run(base_args(pairs_dir, tiny_open_clip, second_open_clip, out, modes="fast")
                        + ["--limit", "2", "--sentence-model", "all-MiniLM-L6-v2"])
    assert rc == 0, stderr
    assert "sentence-transformers is not installed" in stderr
    rep = json.loads(out.read_text())
    assert rep["config"]["sentence_model"] is None
    assert rep["modes"]["fast"]["text_similarity_sentence"] is None
    assert rep["modes"]["fast"]["text_similarity_clip"]["n"] == 2  # always reported


def test_unknown_clip_exits_2_with_one_line(pairs_dir: Path, tiny_open_clip: Path, tmp_path: Path) -> None:
    args = base_args(pairs_dir, tiny_open_clip, tiny_open_clip, tmp_path / "x.json", modes="fast")
    args[2] = "no-such-model"
    rc, stdout, stderr = run(args)
    assert rc == 2 and not stdout
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("skipped ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-model" in lines[0]
    assert "Traceback" not in stderr and not (tmp_path / "x.json").exists()


def test_unknown_mode_exits_2(pairs_dir: Path, tiny_open_clip: Path, tmp_path: Path) -> None:
    rc, _, stderr = run(base_args(pairs_dir, tiny_open_clip, tiny_open_clip, tmp_path / "x.json", modes="fast,bogus"))
    assert rc == 2 and stderr.splitlines()[-1].startswith("error: unknown mode 'bogus'")


def test_no_caption_source_exits_2(pairs_dir: Path, tiny_open_clip: Path, tmp_path: Path) -> None:
    args = [a for a in base_args(pairs_dir, tiny_open_clip, tiny_open_clip, tmp_path / "x.json")
            if a != "--caption-from-prompt"]
    rc, _, stderr = run(args)
    assert rc == 2 and "--caption-from-prompt" in stderr.splitlines()[-1]


# -- the trained toy model: the reference row means something ------------------------------
@pytest.mark.skipif(not (TOY_MODEL / "open_clip_config.json").exists(),
                    reason=f"no trained toy model at {TOY_MODEL} (train it: python -m bench.toyworld.train)")
def test_trained_toy_model_reference_row(tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    write_pairs(folder, n=N_IMAGES, seed=21, broken=False)
    out = tmp_path / "toy.json"
    rc, _stdout, stderr = run(base_args(folder, TOY_MODEL, TOY_MODEL, out))
    assert rc == 0, stderr
    assert "not held out" in stderr  # one trained toy model: search and evaluator are the same
    rep = json.loads(out.read_text())
    rows = rep["per_image"]
    true = np.array([r["eval_similarity_true"] for r in rows])
    shuffled = np.array([r["eval_similarity_shuffled"] for r in rows])
    # an image's own true prompt beats another image's true prompt, on average and on most images
    assert true.mean() > shuffled.mean()
    assert (true > shuffled).mean() >= 0.75
    assert rep["reference"]["shuffled"]["true_minus_shuffled"]["low"] > 0
    # under its own encoder, the search improves on the caption it starts from
    assert rep["modes"]["best"]["eval_similarity"]["stat"] > rep["reference"]["caption"]["eval_similarity"]["stat"]
    # a searched prompt is nearer its image's true prompt than the other images' true prompts are
    for mode in ("fast", "best"):
        assert rep["modes"][mode]["text_similarity_clip"]["stat"] > rep["reference"]["shuffled"][
            "text_similarity_clip"]["stat"]
