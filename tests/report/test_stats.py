"""The report's statistics: a planted phrase is found, phrases with one distribution are not flagged."""

from __future__ import annotations

import numpy as np
import pytest

from image2prompt.report.collect import Collection, grouper
from image2prompt.report.stats import benjamini_hochberg, cooccurrence, separating_phrases
from image2prompt.errors import SettingsError
from tests.support.synthetic_records import records


def test_benjamini_hochberg_matches_the_textbook_procedure():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    q = benjamini_hochberg(p)
    # sorted p 0.005 0.01 0.03 0.04 0.2 -> p*n/rank 0.025 0.025 0.05 0.05 0.2, then running minimum from the top
    assert q == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.2])
    assert benjamini_hochberg(np.array([])).size == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_planted_phrase_separates_and_null_phrases_do_not(seed: int):
    col = Collection("folder").add_all(records(3000, {"oils": 0.5, "photos": 0.5}, per_category=120,
                                               planted={"visible brushstrokes": {"oils": 0.35, "photos": 0.10}},
                                               seed=seed))
    found = separating_phrases(col, seed=seed)
    flagged = [s for s in found if s.significant]
    assert [s.text for s in flagged] == ["visible brushstrokes"]
    planted = flagged[0]
    truth = 0.25 if planted.group == "oils" else -0.25  # 35% minus 10% of the images, seen from either group
    assert planted.effect == pytest.approx(truth, abs=0.04)
    assert planted.low <= planted.effect <= planted.high and planted.high - planted.low < 0.1
    assert planted.low - 0.01 <= truth <= planted.high + 0.01  # the interval covers the truth
    assert len(found) > 300  # every phrase seen often enough was tested, and survived the correction


def test_one_group_compares_nothing_and_many_groups_each_against_the_rest():
    one = Collection().add_all(records(300, per_category=30))
    assert separating_phrases(one) == []
    many = Collection("folder").add_all(records(2400, {"a": 1, "b": 1, "c": 1}, per_category=40,
                                                planted={"only in c": {"c": 0.5}}))
    flagged = [s for s in separating_phrases(many) if s.significant]
    assert {(s.group, s.text) for s in flagged if s.effect > 0} == {("c", "only in c")}


def test_cooccurrence_counts_pairs_in_prompts():
    rows = [{"source": f"x/{i}.png", "ok": True, "result": {"prompt": "p", "phrases": [
        {"text": t, "category": "flavors", "score": 0.1} for t in ts]}}
        for i, ts in enumerate([["a", "b"], ["a", "b"], ["a", "c"], ["c"]])]
    co = cooccurrence(Collection().add_all(rows))
    idx = {t: i for i, t in enumerate(co.labels)}
    assert co.counts[idx["a"], idx["b"]] == 2 and co.counts[idx["a"], idx["c"]] == 1
    assert co.counts[idx["b"], idx["c"]] == 0 and co.counts[idx["a"], idx["a"]] == 3
    top = co.pairs()[0]
    assert (top["a"], top["b"], top["images"]) == ("a", "b", 2) and top["lift"] == pytest.approx(2 / (3 * 2 / 4))


def test_groupers_and_bad_specs():
    rec = {"source": "set/oils/x.png", "mode": "fast", "result": {"clip_model": "ViT"}}
    assert grouper("folder")(rec) == "set/oils"
    assert grouper("column:clip_model")(rec) == "ViT" and grouper("column:mode")(rec) == "fast"
    assert grouper("regex:set/(\\w+)/")(rec) == "oils" and grouper("regex:zzz")(rec) == "(no match)"
    for bad in ("colour", "column:", "regex:("):
        with pytest.raises(SettingsError):
            grouper(bad)


def test_memory_is_bounded_by_the_vocabulary():
    col = Collection(points=50, thumbnails=10).add_all(records(2000, per_category=20))
    assert len(col.points) == 50 and len(col.phrases) <= 5 * 20
    assert all(len(s.sample) <= 128 for s in col.phrases.values())
    assert col.images == 2000 and len(col.prompt_ends) == 2000


def test_fisher_exact_where_the_z_test_would_mislead():
    from image2prompt.report.stats import fisher_exact, two_proportion_p

    # scipy.stats.fisher_exact([[3, 1], [1, 3]]) == 0.4857...; [[8, 2], [1, 5]] == 0.0349...
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(0.485714, abs=1e-6)
    assert fisher_exact(8, 10, 1, 6) == pytest.approx(0.034965, abs=1e-6)
    # a rare phrase: 4 of 27 images against 2 of 273 (the z-test says p ~ 6e-7)
    p = two_proportion_p(np.array([4.0]), 27, np.array([2.0]), 273)
    assert p[0] == pytest.approx(fisher_exact(4, 27, 2, 273)) and p[0] > 1e-4


def test_chunked_cooccurrence_equals_one_pass():
    col = Collection().add_all(records(500, per_category=15))
    whole, chunked = cooccurrence(col), cooccurrence(col, chunk=37)
    assert whole.labels == chunked.labels and np.array_equal(whole.counts, chunked.counts)


def test_a_mixed_collection_compares_only_images_with_stored_scores():
    with_scores = list(records(400, {"a": 1.0}, per_category=20, seed=1))
    without = [dict(r, source=f"b/{i}.png", result=dict(r["result"], trace=None))
               for i, r in enumerate(records(400, {"b": 1.0}, per_category=20, seed=2))]
    col = Collection("folder").add_all(with_scores + without)
    col.finish()
    assert col.with_scores == 400 and col.scored_groups == {"a": 400}
    assert separating_phrases(col) == []  # group b has no top phrases to compare: nothing is flagged
    only_prompts = Collection("folder").add_all(without)
    only_prompts.finish()
    assert only_prompts.scored_groups == {"b": 400}
    tops = [s.images("top") for s in only_prompts.phrases.values()]
    assert tops == [s.images("prompt") for s in only_prompts.phrases.values()] and sum(tops) > 400  # prompts stand in


def test_phrases_with_dollar_signs_do_not_break_the_figures(tmp_path):
    from image2prompt.report import build_report

    rows = [{"source": f"g{i % 2}/{i}.png", "ok": True, "result": {"prompt": "p", "phrases": [
        {"text": t, "category": "flavors", "score": 0.1 * i} for t in ("$$", "a $x^{$ b", "$\\nosuchcmd$")]}}
        for i in range(12)]
    from tests.support.synthetic_records import write_jsonl

    data = write_jsonl(tmp_path / "r.jsonl", iter(rows))
    summary = build_report([data], html_path=tmp_path / "r.html")
    assert summary["images"] == 12 and "$$" in (tmp_path / "r.html").read_text()
