"""The --retry-failed policy as the library keeps it (image2prompt.batch.retry.plan_retry): front
ends pass what they were given and show its one-line refusal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from image2prompt.batch.retry import RetryPlan, RetryRefused, plan_retry, retry_outputs, run_path
from image2prompt.settings import SearchSettings

WORDS = {"mode": "--mode", "flavors": "--flavors", "floor": "--floor", "clip": "--clip", "chunks": "--chunks",
         "captioner": "--caption-model", "vocab": "--vocab", "retry": "--retry-failed"}


def kept_run(tmp_path: Path, **changes: Any) -> Path:
    output = tmp_path / "out.jsonl"
    run = {"fingerprint": "f", "settings": SearchSettings(mode="fast", max_flavors=4).to_dict(),
           "clip": ["ViT-B-32/openai"], "captioner": "blip-base", "vocab": [str(tmp_path / "v")],
           "caption": None,
           "outputs": {"sidecar": {"ext": ".caption", "on_existing": "append", "prefix": "sks", "suffix": None,
                                   "dedupe": True},
                       "store_features": str(tmp_path / "feats"), "store_scores": None}}
    run.update(changes)
    run_path(output).write_text(json.dumps(run), encoding="utf-8")
    return output


def test_a_retry_runs_with_the_kept_settings_models_and_outputs_whatever_its_defaults(tmp_path: Path) -> None:
    output = kept_run(tmp_path)
    plan = plan_retry(output, SearchSettings(), clip=["ViT-L-14/openai"], captioner="auto", vocab=(), caption=None)
    assert plan == RetryPlan(SearchSettings(mode="fast", max_flavors=4), ["ViT-B-32/openai"], "blip-base",
                             (str(tmp_path / "v"),), None,
                             {"sidecar": ".caption", "on_existing": "append", "prefix": "sks", "suffix": None,
                              "dedupe": True, "store_features": str(tmp_path / "feats")})


def test_given_options_that_say_otherwise_are_refused_in_one_line_in_the_front_ends_words(tmp_path: Path) -> None:
    output = kept_run(tmp_path)
    ours = SearchSettings(mode="best", min_flavors=2, max_flavors=6, chunks=True, floor=None)
    with pytest.raises(RetryRefused) as err:
        plan_retry(output, ours, clip=["ViT-L-14/openai"], captioner="blip-large", vocab=(), caption=None,
                   given={"mode", "min_flavors", "max_flavors", "chunks", "floor", "clip", "captioner", "vocab"},
                   names=WORDS)
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"--retry-failed: the failed inputs of {output} ran with --mode fast, not --mode best; "
                       "no --chunks, not --chunks; --flavors 8,4, not --flavors 2,6; --floor 0.75, not --floor off; "
                       "--clip ViT-B-32/openai, not --clip ViT-L-14/openai; "
                       "--caption-model blip-base, not --caption-model blip-large; "
                       f"--vocab {tmp_path / 'v'}, not no --vocab; leave those options out to retry them as they ran")


def test_without_names_the_refusal_uses_the_settings_names(tmp_path: Path) -> None:
    output = kept_run(tmp_path)
    with pytest.raises(RetryRefused, match="ran with mode fast, not mode best; leave"):
        plan_retry(output, SearchSettings(), clip=["ViT-B-32/openai"], captioner="blip-base",
                   vocab=[str(tmp_path / "v")], given={"mode", "clip", "captioner", "vocab"})


def test_auto_is_the_captioner_it_picks_and_a_local_clip_compares_absolute(tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    output = kept_run(tmp_path, clip=[f"local-dir:{folder}"], captioner="blip-base")
    relative = f"local-dir:{os.path.relpath(folder)}"
    plan = plan_retry(output, SearchSettings(), clip=[relative], captioner="auto", low_vram=True,
                      given={"clip", "captioner"})
    assert plan.clip == [f"local-dir:{folder}"] and plan.captioner == "blip-base"
    with pytest.raises(RetryRefused, match="captioner blip-base, not captioner auto"):
        plan_retry(output, SearchSettings(), clip=[relative], captioner="auto", given={"captioner"})


def test_given_output_options_win_over_the_kept_ones(tmp_path: Path) -> None:
    output = kept_run(tmp_path)
    plan = plan_retry(output, SearchSettings(), clip=[], captioner="auto", given={"sidecar", "store_features"})
    assert plan.outputs == {}
    assert retry_outputs({"outputs": {"store_scores": 3}}, given=()) == {"store_scores": 3}


def test_no_kept_run_keeps_the_retrys_own_settings(tmp_path: Path) -> None:
    ours = SearchSettings(mode="turbo")
    plan = plan_retry(tmp_path / "none.jsonl", ours, clip=["a/b"], captioner=None, vocab=["v"], caption="c",
                      given={"mode"})
    assert plan == RetryPlan(ours, ["a/b"], None, ("v",), "c", {})


def test_kept_settings_that_cannot_be_read_are_refused(tmp_path: Path) -> None:
    output = kept_run(tmp_path, settings={"mode": "fast", "no_such_knob": 1})
    with pytest.raises(RetryRefused) as err:
        plan_retry(output, SearchSettings(), clip=[], captioner="auto", names=WORDS)
    assert str(err.value).startswith(f"--retry-failed: cannot use the settings kept in {output}.failed.json (")
    assert str(err.value).endswith("retry with the options of that run, without --retry-failed")
