"""The runner: inputs -> decoded images -> encode -> search -> one record per input."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from image2prompt.errors import Image2PromptError, ModelLoadError, SettingsError
from image2prompt.io import ImageSource
from image2prompt.results import Result
from image2prompt.runner import Record, Runner
from image2prompt.settings import SearchSettings
from tests.conftest import make_images

FAST = SearchSettings(mode="fast")


# --- without models: a stand-in with the interrogator's stage API ------------------------


@dataclass
class FakeFeatures:
    image: Image.Image
    caption: str | None
    source: str | None


class FakeInterrogator:
    """encode / search_indexed / needs_caption / manage_devices, with hooks to fail."""

    def __init__(self, fail: Any = None, reverse: bool = False) -> None:
        self.fail = fail  # called with the batch's sources; may raise
        self.reverse = reverse  # search yields the batch's results in reverse (completion order)
        self.manage_devices = True
        self.batches: list[list[str | None]] = []
        self.seen_manage_devices: list[bool] = []

    def needs_caption(self, settings: SearchSettings) -> bool:
        return settings.mode != "negative"

    def encode(self, images: Sequence[Image.Image], captions: Sequence[str | None] | None = None, *,
               sources: Sequence[str | None] | None = None, generate_captions: bool = True) -> list[FakeFeatures]:
        srcs = list(sources or [None] * len(images))
        caps = list(captions or [None] * len(images))
        self.batches.append(srcs)
        self.seen_manage_devices.append(self.manage_devices)
        if self.fail is not None:
            self.fail(srcs)
        return [FakeFeatures(im, c or ("generated" if generate_captions else None), s)
                for im, c, s in zip(images, caps, srcs)]

    def search_indexed(self, features: Sequence[FakeFeatures],
                       settings: SearchSettings | None = None) -> Iterator[tuple[int, Result]]:
        order = range(len(features) - 1, -1, -1) if self.reverse else range(len(features))
        for i in order:
            f = features[i]
            yield i, Result(prompt=f"{f.caption}, {f.image.size[0]}x{f.image.size[1]}", mode=settings.mode
                            if settings else "best", caption=f.caption, similarity=None, clip_model="fake",
                            caption_model=None, source=f.source)


def sized(*widths: int) -> list[Image.Image]:
    return [Image.new("RGB", (w, 4), (w % 256, 0, 0)) for w in widths]


def test_records_in_input_order_with_errors_at_their_position(tmp_path: Path) -> None:
    fake = FakeInterrogator(reverse=True)
    missing = tmp_path / "nope.png"
    inputs = [*sized(10, 11), str(missing), *sized(12), np.full((3, 3, 3), 7.0), *sized(13, 14)]
    records = list(Runner(fake, FAST, batch_size=2).run(inputs))
    assert [r.index for r in records] == list(range(7))
    assert [r.ok for r in records] == [True, True, False, True, False, True, True]
    assert records[2].source == str(missing) and records[2].error == f"{missing}: no such file or directory"
    assert records[4].source == "<array>" and "must be in [0, 1]" in (records[4].error or "")
    assert [r.result.prompt for r in records if r.result] == [f"generated, {w}x4" for w in (10, 11, 12, 13, 14)]
    # the five decoded images went through the model two at a time
    assert fake.batches == [["<PIL.Image>"] * 2, ["<PIL.Image>"] * 2, ["<PIL.Image>"]]
    assert all(r.result is None or r.result.source == r.source for r in records)


def test_completion_order_yields_each_record_when_known(tmp_path: Path) -> None:
    fake = FakeInterrogator(reverse=True)
    images = [ImageSource(f"img{i}", "pil", im) for i, im in enumerate(sized(10, 11, 12))]
    inputs = [*images, str(tmp_path / "nope.png")]
    records = list(Runner(fake, FAST, batch_size=8, order="completion").run(inputs))
    # the missing file is known before the batch runs; then the results as the search yields them
    # (the batch holds the images as their decodes finished; the fake yields it in reverse)
    assert records[0].index == 3 and not records[0].ok
    (batch,) = fake.batches
    assert sorted(batch) == ["img0", "img1", "img2"]  # type: ignore[type-var]
    assert [r.source for r in records[1:]] == batch[::-1]
    assert [r.index for r in Runner(fake, FAST, batch_size=8).run(inputs)] == [0, 1, 2, 3]


def test_bad_image_in_a_batch_is_retried_alone() -> None:
    bad = sized(99)[0]

    def fail(srcs: list[str | None]) -> None:
        if "bad" in srcs:
            raise RuntimeError("boom\n  in the model")

    fake = FakeInterrogator(fail=fail)
    named = [*sized(10, 11), bad, *sized(12)]
    # named sources: the fake fails any batch holding the one named "bad"
    sources = [ImageSource("bad" if im is bad else f"img{i}", "pil", im) for i, im in enumerate(named)]
    records = list(Runner(fake, FAST, batch_size=4).run(sources))
    assert [r.ok for r in records] == [True, True, False, True]
    assert records[2].error == "bad: could not interrogate (boom in the model)"
    assert fake.batches[0] == ["img0", "img1", "bad", "img3"]
    assert fake.batches[1:] == [["img0"], ["img1"], ["bad"], ["img3"]]


def test_library_error_stops_after_error_records_for_its_batch() -> None:
    calls = {"n": 0}

    def fail(srcs: list[str | None]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ModelLoadError("the captioner's weights are gone")

    fake = FakeInterrogator(fail=fail)
    got: list[Record] = []
    with pytest.raises(ModelLoadError):
        for record in Runner(fake, FAST, batch_size=2).run(sized(1, 2, 3, 4, 5, 6)):
            got.append(record)
    assert [r.ok for r in got] == [True, True, False, False]
    assert got[2].error == "<PIL.Image>: could not interrogate (the captioner's weights are gone)"
    assert calls["n"] == 2  # no retry, no third batch


def test_lazy_interrogator_is_loaded_only_for_a_decoded_image(tmp_path: Path) -> None:
    loads: list[int] = []

    def factory() -> FakeInterrogator:
        loads.append(1)
        return FakeInterrogator()

    runner = Runner(factory, FAST)
    records = list(runner.run([str(tmp_path / "a.png"), np.zeros((2, 2, 3), np.int32)]))
    assert [r.ok for r in records] == [False, False] and loads == [] and runner.interrogator is None
    records = list(runner.run(sized(3)))
    assert records[0].ok and loads == [1] and isinstance(runner.interrogator, FakeInterrogator)
    list(runner.run(sized(3)))
    assert loads == [1]


def test_load_failure_propagates() -> None:
    def factory() -> FakeInterrogator:
        raise ModelLoadError("no such model")

    with pytest.raises(ModelLoadError, match="no such model"):
        list(Runner(factory, FAST).run(sized(3)))


def test_manage_devices_is_off_for_the_run_and_restored() -> None:
    fake = FakeInterrogator()
    list(Runner(fake, FAST, manage_devices=False, batch_size=1).run(sized(1, 2)))
    assert fake.seen_manage_devices == [False, False] and fake.manage_devices is True
    it = Runner(fake, FAST, manage_devices=False, batch_size=1).run(sized(1, 2, 3))
    next(it)
    assert fake.manage_devices is False
    it.close()  # stopping early restores it too
    assert fake.manage_devices is True
    list(Runner(fake, FAST).run(sized(1)))
    assert fake.seen_manage_devices[-1] is True


def test_caption_for_every_input_and_negative_mode_captions_nothing() -> None:
    fake = FakeInterrogator()
    (rec,) = Runner(fake, FAST, caption="a given caption").run(sized(5))
    assert rec.result is not None and rec.result.caption == "a given caption"
    (rec,) = Runner(fake, SearchSettings(mode="negative")).run(sized(5))
    assert rec.result is not None and rec.result.caption is None


def test_unsupported_input_type_is_an_error_record() -> None:
    records = list(Runner(FakeInterrogator(), FAST).run([42, *sized(3)]))
    assert [r.ok for r in records] == [False, True]
    assert records[0].source == "<int>" and "int" in (records[0].error or "")


def test_single_inputs_are_not_iterated() -> None:
    batch = np.stack([np.asarray(im) for im in sized(6, 6, 6)])
    assert [r.source for r in Runner(FakeInterrogator(), FAST).run(batch)] == ["<array 0>", "<array 1>",
                                                                             "<array 2>"]
    assert len(list(Runner(FakeInterrogator(), FAST).run(sized(6)[0]))) == 1


def test_prefetch_is_bounded_and_close_stops_the_workers() -> None:
    consumed = {"n": 0}

    def inputs() -> Iterator[Image.Image]:
        for i in range(1_000_000):
            consumed["n"] += 1
            yield Image.new("RGB", (4, 4), (i % 256, 0, 0))

    before = threading.active_count()
    it = Runner(FakeInterrogator(), FAST, batch_size=3, prefetch=4, workers=2).run(inputs())
    first = next(it)
    assert first.ok and first.index == 0
    assert consumed["n"] <= 3 + 4 + 2
    for _ in range(20):
        next(it)
    assert consumed["n"] <= 21 + 3 + 4 + 2
    it.close()
    assert threading.active_count() <= before


def test_record_to_dict() -> None:
    (rec,) = Runner(FakeInterrogator(), FAST).run(sized(5))
    d = rec.to_dict()
    assert d["index"] == 0 and d["source"] == "<PIL.Image>" and d["ok"] is True and d["error"] is None
    assert d["result"]["prompt"] == rec.result.prompt  # type: ignore[union-attr]
    bad = Record(3, "x.png", error="x.png: no such file")
    assert not bad.ok and bad.to_dict() == {"index": 3, "source": "x.png", "ok": False,
                                            "error": "x.png: no such file", "result": None}


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"workers": 0}, {"prefetch": 0}, {"order": "random"},
                                    {"batch_size": True}])
def test_bad_runner_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        Runner(FakeInterrogator(), FAST, **kwargs)


def test_not_an_interrogator() -> None:
    with pytest.raises(TypeError):
        Runner(42, FAST)  # type: ignore[arg-type]


def test_errors_are_library_errors() -> None:
    assert issubclass(SettingsError, Image2PromptError)


# --- with real tiny models -------------------------------------------------------------


@pytest.fixture(scope="module")
def interrogator(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from image2prompt import Config, Interrogator

    return Interrogator.load(Config(clip_model=f"local-dir:{tiny_open_clip}", caption_model=None, device="cpu",
                                    cache_dir=str(tmp_path_factory.mktemp("runner-cache")),
                                    vocab=(str(small_vocab_dir),)))


@pytest.fixture(scope="module")
def captioning(tiny_open_clip: Path, tiny_blip: Path, small_vocab_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Any:
    from image2prompt import Config, Interrogator

    return Interrogator.load(Config(clip_model=f"local-dir:{tiny_open_clip}", caption_model=f"local-dir:{tiny_blip}",
                                    device="cpu", cache_dir=str(tmp_path_factory.mktemp("runner-cache-blip")),
                                    vocab=(str(small_vocab_dir),)))


def test_folder_with_a_broken_file(image_folder: Path, captioning: Any) -> None:
    records = list(Runner(captioning, FAST, batch_size=2).run([image_folder]))
    assert [Path(r.source).relative_to(image_folder).as_posix() for r in records] == [
        "a.png", "broken.jpg", "c.webp", "sub/b.JPG"]
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert [r.ok for r in records] == [True, False, True, True]
    err = records[1].error or ""
    assert "broken.jpg" in err and "\n" not in err
    for r in records:
        if r.result is not None:
            assert r.result.source == r.source and r.result.mode == "fast"
            assert r.result.caption and r.result.prompt.startswith(r.result.caption)  # generated captions


def test_input_and_completion_order_give_the_same_results(interrogator: Any, tmp_path: Path) -> None:
    imgs = make_images(5)
    inputs = [*imgs[:3], str(tmp_path / "missing.png"), *imgs[3:]]
    in_order = list(Runner(interrogator, FAST, batch_size=2, caption="a test").run(inputs))
    assert [r.index for r in in_order] == list(range(6))
    assert [r.ok for r in in_order] == [True, True, True, False, True, True]
    as_done = list(Runner(interrogator, FAST, batch_size=2, caption="a test", order="completion").run(inputs))
    assert sorted(r.index for r in as_done) == list(range(6))
    by_index = {r.index: r for r in as_done}
    for r in in_order:
        other = by_index[r.index]
        assert other.error == r.error
        assert (other.result.prompt if other.result else None) == (r.result.prompt if r.result else None)


def test_arrays_give_the_same_prompt_as_the_pil_image(interrogator: Any) -> None:
    torch = pytest.importorskip("torch")
    pil = make_images(1)[0]
    px = np.asarray(pil)
    as_float = px.astype(np.float32) / 255.0
    batch = torch.from_numpy(np.stack([as_float, as_float]))  # [B, H, W, C] float, ComfyUI's IMAGE
    inputs = [pil, px, as_float, batch]
    records = list(Runner(interrogator, FAST, batch_size=3, caption="a test").run(inputs))
    assert [r.source for r in records] == ["<PIL.Image>", "<array>", "<array>", "<array 0>", "<array 1>"]
    assert all(r.ok for r in records), [r.error for r in records]
    prompts = {r.result.prompt for r in records if r.result}
    assert len(prompts) == 1
    sims = [r.result.similarity for r in records if r.result]
    assert max(sims) - min(sims) < 1e-5


def test_bad_float_array_is_a_one_line_error_record(interrogator: Any) -> None:
    bad = np.full((16, 16, 3), 255.0, np.float32)
    nan = np.full((16, 16, 3), np.nan, np.float32)
    records = list(Runner(interrogator, FAST, caption="a test").run([bad, make_images(1)[0], nan]))
    assert [r.ok for r in records] == [False, True, False]
    assert records[0].error == "<array>: float pixel values must be in [0, 1], got 255 to 255 (pass uint8 for 0-255 data)"
    assert records[2].error == "<array>: float array contains NaN or infinite values"


def test_generator_input_is_read_ahead_only_a_little(interrogator: Any) -> None:
    consumed = {"n": 0}
    pool = make_images(4)

    def inputs() -> Iterator[Image.Image]:
        for i in range(10_000):
            consumed["n"] += 1
            yield pool[i % 4]

    it = Runner(interrogator, FAST, batch_size=2, prefetch=3, caption="a test").run(inputs())
    first = next(it)
    assert first.ok and first.index == 0
    assert consumed["n"] <= 2 + 3 + 2
    it.close()


def test_keep_features_puts_each_results_features_in_its_record() -> None:
    fake = FakeInterrogator(reverse=True)
    sources = [ImageSource(f"img{i}", "pil", im) for i, im in enumerate(sized(10, 11, 12))]
    records = list(Runner(fake, FAST, batch_size=2, keep_features=True).run(sources))
    assert [r.source for r in records] == ["img0", "img1", "img2"]
    assert all(r.features is not None and r.features.source == r.source for r in records)
    assert "features" not in records[0].to_dict()
    assert all(r.features is None for r in Runner(fake, FAST, batch_size=2).run(sources))


# --- memory: decoded images reduced, and bounded in bytes (issue 28) ----------------------------------


def _spy_encode(monkeypatch: pytest.MonkeyPatch, ic: Any) -> list[list[tuple[int, int]]]:
    """Record the sizes of the images each encode call gets; the real encode still runs."""
    seen: list[list[tuple[int, int]]] = []
    real = ic.encode

    def encode(images: Sequence[Image.Image], *args: Any, **kwargs: Any) -> Any:
        seen.append([im.size for im in images])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(ic, "encode", encode)
    return seen


def _png_file(path: Path, size: tuple[int, int]) -> str:
    Image.new("RGB", size, (size[0] % 256, 90, 160)).save(path)
    return str(path)


def test_decoded_images_are_reduced_to_what_the_models_need(interrogator: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert interrogator.input_side == 64
    seen = _spy_encode(monkeypatch, interrogator)
    inputs = [_png_file(tmp_path / "big.png", (640, 480)), Image.new("RGB", (900, 300)), make_images(1)[0]]
    records = list(Runner(interrogator, FAST, batch_size=4, caption="a test").run(inputs))
    assert all(r.ok for r in records), [r.error for r in records]
    assert seen == [[(92, 69), (225, 75), (72, 72)]]  # 480 // 64 = 7, 300 // 64 = 4; 72 px: as it was


def test_decoded_images_in_flight_are_bounded_in_bytes(interrogator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy_encode(monkeypatch, interrogator)
    pictures = [Image.new("RGB", (100, 100), (i * 30, 0, 0)) for i in range(6)]  # 40,000 bytes each, kept whole
    runner = Runner(interrogator, FAST, batch_size=16, caption="a test", max_bytes=100_000)
    records = list(runner.run(pictures))
    assert [r.ok for r in records] == [True] * 6 and [r.index for r in records] == list(range(6))
    assert [len(b) for b in seen] == [2, 2, 2]  # a batch goes early rather than hold over 100,000 bytes
    with pytest.raises(SettingsError):
        Runner(interrogator, FAST, max_bytes=0)


def test_a_lazy_interrogator_is_loaded_before_more_than_workers_inputs_decode(
        interrogator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    consumed = {"n": 0}
    at_load: list[int] = []

    def inputs() -> Iterator[Image.Image]:
        for i in range(40):
            consumed["n"] += 1
            yield Image.new("RGB", (300, 200), (i, 0, 0))

    def factory() -> Any:
        at_load.append(consumed["n"])
        return interrogator

    seen = _spy_encode(monkeypatch, interrogator)
    records = list(Runner(factory, FAST, batch_size=16, workers=2, caption="a test").run(inputs()))
    assert len(records) == 40 and all(r.ok for r in records)
    # Before the models are loaded their input size is not known, so images decode at full size:
    # only `workers` of them, not the whole prefetch (32), are read before the load.
    assert at_load == [2]
    assert {s for batch in seen for s in batch} == {(100, 67)}  # every one reduced, the first ones too


def test_input_side_is_the_largest_size_any_loaded_model_needs(interrogator: Any, tiny_hf_clip: Path) -> None:
    from torchvision import transforms
    from transformers import BlipImageProcessor, CLIPImageProcessor

    from image2prompt import Interrogator
    from image2prompt.models.clip import load_clip
    from image2prompt.models.loading import processor_input_side, transform_input_side

    # what real checkpoints ship: CLIP resizes the shorter side and crops, BLIP squashes to a square
    assert processor_input_side(CLIPImageProcessor(size={"shortest_edge": 224},
                                                   crop_size={"height": 224, "width": 224})) == 224
    assert processor_input_side(BlipImageProcessor(size={"height": 384, "width": 384})) == 384
    assert processor_input_side(CLIPImageProcessor(do_resize=False)) is None  # takes images as they are
    assert transform_input_side(transforms.Compose([transforms.Resize(336), transforms.CenterCrop(336)])) == 336
    assert transform_input_side(transforms.Compose([transforms.CenterCrop(224)])) is None  # no resize: unknown
    hf = load_clip(f"local-dir:{tiny_hf_clip}", device="cpu")
    hf.processor.image_processor.size = {"shortest_edge": 96}
    hf.processor.image_processor.crop_size = {"height": 96, "width": 96}
    both = Interrogator([interrogator.clips[0], hf], None, interrogator.vocab)
    assert (interrogator.input_side, hf.input_side, both.input_side) == (64, 96, 96)

    class Plugin:  # a captioner plugin that does not say what it needs: images stay whole
        name = "plugin"

    assert Interrogator(interrogator.clips, Plugin(), interrogator.vocab).input_side is None


def test_decoding_ahead_stops_at_max_bytes_and_an_image_over_it_goes_alone(
        interrogator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import Future

    from image2prompt.runner import _Decoded, _Pending

    runner = Runner(interrogator, FAST, max_bytes=100_000)

    def decoded(i: int) -> _Pending:
        fut: Future[Any] = Future()
        fut.set_result(Image.new("RGB", (100, 100)))  # 40,000 bytes
        return _Pending(i, f"img{i}", fut)

    waiting = _Pending(9, "img9", Future())  # still decoding: holds nothing yet
    assert not runner._over_budget([], deque([decoded(0), decoded(1), waiting]))
    assert runner._over_budget([], deque([decoded(0), decoded(1), decoded(2)]))  # 120,000: read no more
    assert runner._over_budget([_Decoded(3, "img3", Image.new("RGB", (100, 100)))], deque([decoded(0), decoded(1)]))
    assert not Runner(interrogator, FAST, max_bytes=None)._over_budget([], deque([decoded(0)] * 10))

    seen = _spy_encode(monkeypatch, interrogator)
    pictures = [Image.new("RGB", (100, 100), (i * 30, 0, 0)) for i in range(5)]
    records = list(Runner(interrogator, FAST, caption="a test", max_bytes=30_000).run(pictures))
    assert [r.index for r in records if r.ok] == list(range(5))  # each over the budget: each alone, none lost
    assert [len(b) for b in seen] == [1] * 5


class _ServerCaptioner:
    """A captioner that works elsewhere (``concurrent``), recording when each batch's captions are asked for."""

    name = "server"
    concurrent = True

    def __init__(self, events: list[str], lock: threading.Lock) -> None:
        self.events, self.lock = events, lock

    def caption(self, images, *, batch_size: int = 16) -> list[str]:
        widths = [im.size[0] for im in images]
        with self.lock:
            self.events.append(f"caption {widths}")
        return [f"seen {w}" for w in widths]


def test_a_caption_servers_next_batch_is_asked_for_while_this_one_is_searched(
        tiny_open_clip: Path, small_vocab_dir: Path, tmp_path: Path) -> None:
    """Captions from a server overlap CLIP: batch k+1's are asked for before batch k is searched."""
    from image2prompt import Config, Interrogator
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.clip import load_clip
    from image2prompt.vocab import load_folder_pack

    events: list[str] = []
    lock = threading.Lock()
    ic = Interrogator(load_clip(f"local-dir:{tiny_open_clip}", device="cpu"), _ServerCaptioner(events, lock),
                      load_folder_pack(small_vocab_dir), EmbeddingCache(tmp_path, download=False),
                      Config(caption_model=None))
    searched = ic.search_indexed

    def search_indexed(features, settings=None, **kw):  # the real search, noted as it starts
        with lock:
            events.append(f"search {[f.caption for f in features]}")
        return searched(features, settings, **kw)

    ic.search_indexed = search_indexed  # type: ignore[method-assign]
    records = list(Runner(ic, FAST, batch_size=2).run(sized(10, 11, 12, 13, 14)))
    assert [r.ok for r in records] == [True] * 5 and [r.result.caption for r in records] == \
        [f"seen {w}" for w in (10, 11, 12, 13, 14)]
    assert all(r.result.caption_model == "server" for r in records)  # labelled as generated, not as given
    assert events.index("caption [12, 13]") < events.index("search ['seen 10', 'seen 11']")  # asked ahead
    assert events.index("caption [14]") < events.index("search ['seen 12', 'seen 13']")
