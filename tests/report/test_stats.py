"""The report's statistics: a planted phrase is found, phrases with one distribution are not flagged."""

from __future__ import annotations

import numpy as np
import pytest

from image2prompt.errors import SettingsError
from image2prompt.report.collect import Collection, grouper
from image2prompt.report.stats import benjamini_hochberg, cooccurrence, separating_phrases
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
        {"text": t, "category": "flavors", "score": 0.1 * i}
        for t in (("$$", "a $x^{$ b") if i % 3 else ("$\\nosuchcmd$",))]}}  # "$$" goes with "a $x^{$ b"
        for i in range(12)]
    from tests.support.synthetic_records import write_jsonl

    data = write_jsonl(tmp_path / "r.jsonl", iter(rows))
    summary = build_report([data], html_path=tmp_path / "r.html")
    assert summary["images"] == 12 and "$$" in (tmp_path / "r.html").read_text()


def _runs(n: int, fingerprints: list[str]) -> list[dict]:
    """The records of a batch output run once per fingerprint over the same ``n`` images (a change
    of settings, e.g. another mode, appends a record per image under a new fingerprint)."""
    out: list[dict] = []
    for seed, fp in enumerate(fingerprints):
        for i, r in enumerate(records(n, {"oils": 0.5, "photos": 0.5}, per_category=30, seed=seed,
                                      planted={"visible brushstrokes": {"oils": 0.4, "photos": 0.1}})):
            source = out[i]["source"] if seed else r["source"]  # the same images, other scores
            out.append(dict(r, source=source, fingerprint=fp, result=dict(r["result"], fingerprint=fp, source=source)))
    return out


def _numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("records", "left_out", "fingerprints")}


def test_each_image_is_counted_once_whatever_its_fingerprints(tmp_path, caplog):
    """Three runs of 305 images in one output are 305 images, the latest run's, not 915."""
    from image2prompt.report import ReportOptions, build_report
    from tests.support.synthetic_records import write_jsonl

    rows = _runs(305, ["a" * 16, "b" * 16, "c" * 16])
    both = write_jsonl(tmp_path / "runs.jsonl", iter(rows))
    last = write_jsonl(tmp_path / "last.jsonl", iter(rows[610:]))
    first = write_jsonl(tmp_path / "first.jsonl", iter(rows[:305]))
    opts = ReportOptions(group_by="folder")
    with caplog.at_level("WARNING", logger="image2prompt"):
        summary = build_report([both], opts, html_path=tmp_path / "r.html")
    assert (summary["records"], summary["images"], summary["with_top_scores"]) == (915, 305, 305)
    assert sum(g["images"] for g in summary["groups"].values()) == 305
    assert summary["left_out"]["repeats"] == 610 and summary["fingerprints"] == {"c" * 16: 305}
    assert _numbers(summary) == _numbers(build_report([last], opts))  # exactly the latest run's numbers
    said = [r.getMessage() for r in caplog.records if "Left out" in r.getMessage()]
    assert len(said) == 1 and "610 earlier records of the same images" in said[0] and "\n" not in said[0]
    assert "Left out 610 earlier records of the same images" in (tmp_path / "r.html").read_text()
    # --fingerprint (a prefix will do) counts one run's records only
    only = build_report([both], ReportOptions(group_by="folder", fingerprints=["aaaa"]), json_path=tmp_path / "a.json")
    assert (only["images"], only["left_out"]["other_fingerprints"], only["left_out"]["repeats"]) == (305, 610, 0)
    assert _numbers(only) == _numbers(build_report([first], opts))
    from image2prompt.report import ReportError

    with pytest.raises(ReportError, match="no records with a result of fingerprint zz .*aaaaaaaaaaaaaaaa: 305"):
        build_report([both], ReportOptions(fingerprints=["zz"]), json_path=tmp_path / "z.json")


def test_the_latest_record_of_an_image_counts_and_an_error_redone_is_no_error():
    from image2prompt.report.collect import Selection

    def rec(source: str, fp: str, ok: bool = True, mode: str = "fast") -> dict:
        return ({"source": source, "fingerprint": fp, "ok": True, "result": {"prompt": "p", "mode": mode}}
                if ok else {"source": source, "fingerprint": fp, "ok": False, "error": "bad"})

    rows = [rec("x.png", "1"), rec("y.png", "1", ok=False), rec("z.png", "1", ok=False), rec("x.png", "2"),
            rec("y.png", "2"), rec("z.png", "2", ok=False), rec("w.png", "2", ok=False), rec("x.png", "3", False)]
    sel = Selection(grouper(None))
    assert all(sel.offer(r) for r in rows)
    sel.finish()
    # x: its last result (not the later error); y: redone; z: its last error; w: its only error
    assert sel.keep.tolist() == [False, False, False, True, True, True, True, False]
    assert sel.repeats == 4 and "Left out 4 earlier records" in sel.left_out()
    # grouped by a record field, each group keeps its own record of an image (two runs compared)
    by_mode = Selection(grouper("column:mode"))
    for r in [rec("x.png", "1", mode="fast"), rec("x.png", "2", mode="best"), rec("x.png", "3", mode="best")]:
        by_mode.offer(r)
    assert by_mode.finish().keep.tolist() == [True, False, True]


def test_a_groups_top_phrases_are_its_own_best_scores():
    """Ties in a group (a one-image group: every phrase once) break by the group's own scores."""
    def image(source: str, scores: dict[str, float]) -> dict:
        top = [{"text": t, "category": "mediums", "score": s} for t, s in sorted(scores.items(), key=lambda ts: -ts[1])]
        return {"source": source, "ok": True, "result": {"prompt": "p", "phrases": top[:1],
                                                         "trace": {"top": {"mediums": top}}}}

    many = [image(f"big/{i}.png", {"oil": 0.30, "ink": 0.29, "clay": 0.28, "wood": 0.10, "glass": 0.09})
            for i in range(20)]
    lone = image("lone/0.png", {"wood": 0.33, "glass": 0.31, "clay": 0.25, "oil": 0.20, "ink": 0.19})
    col = Collection("folder").add_all(many + [lone])
    col.finish()
    from image2prompt.report.build import ReportOptions, _summary
    from image2prompt.report.stats import cooccurrence as cooc

    summary = _summary(col, ReportOptions(group_by="folder"), [], cooc(col))
    assert summary["groups"]["lone"]["top"]["mediums"][:3] == ["wood", "glass", "clay"]
    assert summary["groups"]["big"]["top"]["mediums"][:3] == ["oil", "ink", "clay"]


def test_a_top_k_that_holds_the_whole_category_is_warned_about(tmp_path):
    from image2prompt.report import build_report
    from tests.support.synthetic_records import write_jsonl

    rng = np.random.default_rng(0)
    mediums, flavors = [f"medium {j}" for j in range(6)], [f"flavor {j}" for j in range(40)]
    rows = []
    for i in range(50):
        top = {"mediums": [{"text": t, "category": "mediums", "score": float(rng.normal())} for t in mediums],
               "flavors": [{"text": t, "category": "flavors", "score": float(rng.normal())}
                           for t in rng.choice(flavors, 6, replace=False)]}
        rows.append({"source": f"{i}.png", "ok": True, "result": {"prompt": "p", "phrases": top["flavors"][:2],
                                                                   "trace": {"top": top}}})
    summary = build_report([write_jsonl(tmp_path / "r.jsonl", iter(rows))], html_path=tmp_path / "r.html")
    assert all(p["share"] == 1 for p in summary["categories"]["mediums"])
    warned = summary["warnings"]
    assert len(warned) == 1 and warned[0].startswith("mediums: the top 6 phrases stored per image") \
        and "all 6 phrases" in warned[0] and "mean nothing" in warned[0]  # flavors (6 of 40) are fine
    assert "mediums: the top 6 phrases stored per image" in (tmp_path / "r.html").read_text()


def test_the_cooccurrence_table_lists_only_pairs_above_chance():
    # a and b always together; c with a less often than chance; d with everything (lift 1)
    sets = [["a", "b", "d"]] * 6 + [["c", "d"]] * 5 + [["a", "b", "c", "d"]]
    rows = [{"source": f"x/{i}.png", "ok": True, "result": {"prompt": "p", "phrases": [
        {"text": t, "category": "flavors", "score": 0.1} for t in ts]}} for i, ts in enumerate(sets)]
    co = cooccurrence(Collection().add_all(rows))
    pairs = co.pairs()
    assert [(p["a"], p["b"]) for p in pairs] == [("a", "b")] and pairs[0]["lift"] == pytest.approx(12 / 7)
    below = {(p["a"], p["b"]): p["lift"] for p in co.pairs(min_lift=0.0)}  # what the table leaves out
    assert below[("a", "c")] == pytest.approx(1 / 3.5) and below[("d", "a")] == pytest.approx(1.0)
