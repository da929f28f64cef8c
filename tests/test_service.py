"""The micro-batcher: shared forward passes, each request its own result, bounded, cancellable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from image2prompt import Config, Interrogator, SearchSettings
from image2prompt.errors import CaptionRequired, SettingsError
from image2prompt.service import Busy, MicroBatcher, ShuttingDown
from tests.support.gate import gate_encode


@pytest.fixture(scope="module")
def ip(tiny_open_clip: Path, tiny_blip: Path, small_vocab_dir: Path, tmp_path_factory) -> Interrogator:
    return Interrogator.load(Config(
        clip_model=f"local-dir:{tiny_open_clip}", caption_model=f"local-dir:{tiny_blip}", device="cpu",
        cache_dir=str(tmp_path_factory.mktemp("cache")), vocab=(str(small_vocab_dir),)))


SETTINGS = [SearchSettings(mode="fast"), SearchSettings(mode="classic"), SearchSettings(mode="negative"),
            SearchSettings(mode="best", candidates=16, max_flavors=4, negative=True),
            SearchSettings(mode="fast", max_tokens=20)]


def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_result(ip, images, monkeypatch):
    jobs = [(images[i], SETTINGS[i % len(SETTINGS)], "a photo" if i % 3 == 0 else None) for i in range(10)]
    alone = [ip.interrogate(im, settings=s, caption=c) for im, s, c in jobs]
    gate = gate_encode(monkeypatch, ip)
    with MicroBatcher(ip, max_batch=16, max_wait=0.0) as batcher:
        first = batcher.submit(*jobs[0][:2], caption=jobs[0][2])
        wait_until(lambda: batcher.stats.queued == 0)  # the worker holds the first one, at the gate
        rest = [batcher.submit(im, s, caption=c, source=f"img{i}") for i, (im, s, c) in enumerate(jobs[1:], 1)]
        gate.set()
        results = [first.result(60)] + [f.result(60) for f in rest]
        stats = batcher.stats
    assert stats.batches == 2 and stats.largest_batch == 9  # the nine waiting went through one encode
    for got, want, (_, s, c) in zip(results, alone, jobs):
        assert got.prompt == want.prompt and got.mode == s.mode
        assert (got.negative is None) == (want.negative is None)
        if want.negative is not None:
            assert got.negative.prompt == want.negative.prompt
        if c:
            assert got.caption == c
        assert got.fingerprint == ip.fingerprint(s)
    assert [r.source for r in results[1:]] == [f"img{i}" for i in range(1, 10)]


def test_analyze_and_caption_requests_ride_along(ip, images):
    with MicroBatcher(ip, max_wait=0.05) as batcher:
        a = batcher.submit_analyze(images[0], 3)
        c = batcher.submit_caption(images[1])
        s = batcher.submit(images[2], SearchSettings(mode="fast"))
        analysis, caption, result = a.result(60), c.result(60), s.result(60)
    want = ip.analyze(images[0], 3)
    assert {k: [p.text for p in v] for k, v in analysis.categories.items()} == \
        {k: [p.text for p in v] for k, v in want.categories.items()}
    assert caption == ip.caption([images[1]])[0]
    assert result.prompt == ip.interrogate(images[2], settings=SearchSettings(mode="fast")).prompt


def test_a_bad_request_fails_alone(ip, images, monkeypatch):
    gate = gate_encode(monkeypatch, ip)
    with MicroBatcher(ip, max_wait=0.0) as batcher:
        first = batcher.submit(images[0], SearchSettings(mode="fast"))
        wait_until(lambda: batcher.stats.queued == 0)
        good = batcher.submit(images[1], SearchSettings(mode="fast"))
        bad = batcher.submit("not an image", SearchSettings(mode="fast"))  # type: ignore[arg-type]
        gate.set()
        assert first.result(60).prompt and good.result(60).prompt
        with pytest.raises(Exception):  # noqa: B017  whatever the model raises for a str given as an image
            bad.result(60)
        assert batcher.stats.failed == 1 and batcher.stats.completed == 2


def test_full_queue_is_busy_and_cancelled_requests_cost_nothing(ip, images):
    batcher = MicroBatcher(ip, max_queue=2)  # not started: nothing leaves the queue
    a = batcher.submit(images[0], SearchSettings(mode="fast"))
    b = batcher.submit(images[1], SearchSettings(mode="fast"))
    with pytest.raises(Busy, match="queue is full"):
        batcher.submit(images[2], SearchSettings(mode="fast"))
    assert a.cancel()
    batcher.start()
    try:
        assert b.result(60).prompt
        wait_until(lambda: batcher.stats.dropped == 1)
        stats = batcher.stats
        assert (stats.rejected, stats.completed, stats.dropped) == (1, 1, 1)
    finally:
        batcher.close()


def test_close_fails_what_is_queued(ip, images):
    batcher = MicroBatcher(ip)
    waiting = batcher.submit(images[0], SearchSettings(mode="fast"))
    batcher.close()
    with pytest.raises(ShuttingDown):
        waiting.result(5)
    with pytest.raises(ShuttingDown):
        batcher.submit(images[0])


def test_settings_the_interrogator_cannot_run_are_refused_at_submit(tiny_open_clip, small_vocab_dir, images,
                                                                    tmp_path):
    no_captioner = Interrogator.load(Config(clip_model=f"local-dir:{tiny_open_clip}", caption_model=None,
                                            device="cpu", cache_dir=str(tmp_path), vocab=(str(small_vocab_dir),)))
    with MicroBatcher(no_captioner) as batcher:
        with pytest.raises(CaptionRequired, match="needs a caption.*or use negative or style mode"):
            batcher.submit(images[0], SearchSettings(mode="best"))
        with pytest.raises(SettingsError, match="no caption model"):
            batcher.submit_caption(images[0])
        assert batcher.submit(images[0], SearchSettings(mode="negative")).result(60).prompt
        assert batcher.submit(images[0], SearchSettings(mode="fast"), caption="a cat").result(60).caption == "a cat"
    with pytest.raises(SettingsError):
        MicroBatcher(no_captioner, max_batch=0)


# --- memory: images are reduced on submit, and the queue is bounded in bytes (issue 28) ---------------


def test_submitted_images_are_reduced_to_what_the_models_need(ip, images):
    from PIL import Image

    assert ip.input_side == 64  # the tiny CLIP's and the tiny BLIP's image size
    big = Image.new("RGB", (600, 450), (200, 40, 40))
    batcher = MicroBatcher(ip)  # not started: the request waits in the queue
    try:
        batcher.submit(big, SearchSettings(mode="fast"))
        held = batcher._queue.queue[0].image
        assert held.size == (86, 65)  # 450 // 64 = 7: reduced by 7, the shorter side still >= 64
        assert batcher.stats.held_bytes == 86 * 65 * 4  # what Pillow holds for it
        small = images[0]
        batcher.submit(small, SearchSettings(mode="fast"))
        assert batcher._queue.queue[1].image is small  # under twice the side: kept as it is
    finally:
        batcher.close()


def test_the_queue_is_bounded_in_bytes_and_releases_them(ip, images):
    from PIL import Image

    each = 100 * 100 * 4  # 100x100 stays as it is (100 // 64 = 1)
    batcher = MicroBatcher(ip, max_queue=64, max_queue_bytes=2 * each + 10)
    pictures = [Image.new("RGB", (100, 100), (i * 40, 0, 0)) for i in range(3)]
    a = batcher.submit(pictures[0], SearchSettings(mode="fast"), caption="a")
    b = batcher.submit(pictures[1], SearchSettings(mode="fast"), caption="b")
    with pytest.raises(Busy, match="bytes of images waiting"):
        batcher.submit(pictures[2], SearchSettings(mode="fast"), caption="c")
    assert batcher.stats.held_bytes == 2 * each and batcher.stats.rejected == 1
    batcher.start()
    try:
        assert a.result(60).prompt and b.result(60).prompt
        wait_until(lambda: batcher.stats.held_bytes == 0)  # given back once their batch has run
        assert batcher.submit(pictures[2], SearchSettings(mode="fast"), caption="c").result(60).prompt
    finally:
        batcher.close()
    assert batcher.stats.held_bytes == 0
    lone = MicroBatcher(ip, max_queue_bytes=1)  # an empty queue always lets one request in
    try:
        lone.submit(pictures[0], SearchSettings(mode="fast"), caption="a")
        with pytest.raises(Busy):
            lone.submit(pictures[1], SearchSettings(mode="fast"), caption="b")
    finally:
        lone.close()
    with pytest.raises(SettingsError):
        MicroBatcher(ip, max_queue_bytes=0)
