"""bench/floor_cost.py: it times every mode and floor asked for, and refuses bad arguments in one line."""

from __future__ import annotations

import pytest

from bench import floor_cost, quality

pytestmark = pytest.mark.skipif(not (quality.MODEL_DIR / "open_clip_config.json").is_file(),
                                reason="bench/toyworld/model is not built (python -m bench.toyworld.train)")


def test_every_mode_and_floor_gets_a_time() -> None:
    best = floor_cost.measure(("fast", "classic"), (None, 0.75), images=3, rounds=1)
    assert set(best) == {("fast", None), ("fast", 0.75), ("classic", None), ("classic", 0.75)}
    assert all(0 < v < float("inf") for v in best.values())


@pytest.mark.parametrize("args, message", [(["--floors", "high"], "--floors"), (["--modes", "bset"], "bset")])
def test_bad_arguments_are_one_usage_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        floor_cost.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err
