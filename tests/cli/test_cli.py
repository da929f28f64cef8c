"""The default `run` command end to end, with tiny offline models."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from image2prompt.cli.main import cli


@pytest.fixture
def model_args(tiny_open_clip: Path, tiny_blip: Path, small_vocab_dir: Path, tmp_path: Path) -> list[str]:
    return ["--clip", f"local-dir:{tiny_open_clip}", "--caption-model", f"local-dir:{tiny_blip}",
            "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(tmp_path / "emb")]


@pytest.fixture
def image(image_folder: Path) -> Path:
    return image_folder / "a.png"


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr


def test_fast_json_full_result(image: Path, model_args: list[str]) -> None:
    result = invoke(image, *model_args, "--format", "json", "--mode", "fast")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    for key in ("prompt", "caption", "mode", "similarity", "phrases", "clip_model", "caption_model", "source"):
        assert key in data
    assert data["mode"] == "fast"
    assert data["clip_model"].startswith("local-dir:")
    assert data["caption"] and data["prompt"].startswith(data["caption"])
    assert isinstance(data["similarity"], float)
    assert data["phrases"] and all({"text", "category", "score"} <= set(p) for p in data["phrases"])
    assert data["source"] == str(image)


@pytest.mark.parametrize("mode", ["best", "classic", "negative"])
def test_other_modes(image: Path, model_args: list[str], mode: str) -> None:
    # --caption skips loading the captioner (test_fast_json_full_result covers captioning)
    result = invoke(image, *model_args, "--format", "jsonl", "--mode", mode, "--caption", "a test image")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["mode"] == mode and data["prompt"]
    if mode == "negative":
        assert data["caption"] is None and data["caption_model"] is None
    else:
        assert data["caption"] == "a test image" and data["prompt"].startswith("a test image")


def test_text_single_input_is_the_prompt_alone(image: Path, model_args: list[str]) -> None:
    result = invoke(image, *model_args, "--mode", "fast", "--caption", "a red square")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("a red square, ")
    assert "\t" not in result.stdout and len(result.stdout.splitlines()) == 1


def test_folder_streams_good_images_and_reports_broken(image_folder: Path, model_args: list[str]) -> None:
    result = invoke(image_folder, *model_args, "--format", "jsonl", "--mode", "fast", "--batch-size", "2",
                    "--caption", "x")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    sources = [json.loads(line)["source"] for line in lines]
    assert sources == [str(image_folder / "a.png"), str(image_folder / "c.webp"),
                       str(image_folder / "sub" / "b.JPG")]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].startswith("image2prompt: error: ") and "broken.jpg" in errors[0]
    assert_no_traceback(result)


def test_folder_text_format_is_source_tab_prompt(image_folder: Path, model_args: list[str]) -> None:
    result = invoke(image_folder, *model_args, "--mode", "classic", "--caption", "a test")
    assert result.exit_code == 1
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r) == 2 and r[1].startswith("a test, ") for r in rows)


def test_json_list_is_valid_even_with_failures(image_folder: Path, model_args: list[str]) -> None:
    result = invoke(image_folder / "a.png", image_folder / "broken.jpg", *model_args,
                    "--format", "json", "--mode", "fast", "--caption", "x")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert isinstance(data, list) and len(data) == 1


def test_missing_file_fails_before_models_load(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    # A bogus model name proves no model was loaded: the error is about the file.
    result = invoke(missing, "--clip", "ViT-L-14/nonsense", "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"image2prompt: error: {missing}: no such file or directory"
    assert result.stdout == ""
    assert_no_traceback(result)


def test_unknown_clip_name_lists_known_tags(image: Path, small_vocab_dir: Path) -> None:
    result = invoke(image, "--clip", "ViT-L-14/nonsense", "--caption-model", "none", "--caption", "x",
                    "--vocab", small_vocab_dir, "--device", "cpu")
    assert result.exit_code == 1
    assert "ViT-L-14/nonsense" in result.stderr and "openai" in result.stderr
    assert result.stderr.startswith("image2prompt: error: ")
    assert_no_traceback(result)


def test_local_dir_without_weights(image: Path, tmp_path: Path) -> None:
    folder = tmp_path / "empty-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    result = invoke(image, "--clip", f"local-dir:{folder}", "--caption-model", "none", "--caption", "x",
                    "--device", "cpu")
    assert result.exit_code == 1
    assert "no weights" in result.stderr and str(folder) in result.stderr
    assert_no_traceback(result)


def test_bad_device_is_a_clean_error(image: Path, tiny_open_clip: Path, small_vocab_dir: Path) -> None:
    result = invoke(image, "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption",
                    "x", "--vocab", small_vocab_dir, "--device", "tpu")
    assert result.exit_code == 1
    assert result.stderr.startswith("image2prompt: error: ") and "tpu" in result.stderr
    assert_no_traceback(result)


def test_caption_model_none_needs_caption(image: Path, tiny_open_clip: Path) -> None:
    from image2prompt.errors import CaptionRequired
    from image2prompt.modes import caption_free_modes

    result = invoke(image, "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none")
    assert result.exit_code == 2
    # the library's one message for it, naming the mode and those that need no caption
    assert f"Error: {CaptionRequired('best', caption_free=caption_free_modes())}\n" in result.stderr
    assert "best mode needs a caption" in result.stderr and "negative or style mode" in result.stderr


def test_caption_model_none_with_caption(image: Path, tiny_open_clip: Path, small_vocab_dir: Path,
                                         tmp_path: Path) -> None:
    result = invoke(image, "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none",
                    "--caption", "a red square", "--vocab", small_vocab_dir, "--device", "cpu",
                    "--cache-dir", tmp_path, "--mode", "classic", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["caption"] == "a red square"
    assert data["caption_model"] is None


def test_clip_wins_over_target_with_a_warning(image: Path, tiny_open_clip: Path, small_vocab_dir: Path,
                                              tmp_path: Path) -> None:
    result = invoke(image, "--target", "sdxl", "--clip", f"local-dir:{tiny_open_clip}", "--caption-model",
                    "none", "--caption", "x", "--vocab", small_vocab_dir, "--device", "cpu",
                    "--cache-dir", tmp_path, "--mode", "fast", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clip_model"] == f"local-dir:{tiny_open_clip}"
    assert result.stderr.count("overrides --target") == 1


def test_unknown_target_is_a_usage_error(image: Path) -> None:
    result = invoke(image, "--target", "sd9")
    assert result.exit_code == 2
    assert "sd15" in result.stderr


def test_output_file_csv(image_folder: Path, model_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = invoke(image_folder / "a.png", image_folder / "c.webp", *model_args, "--mode", "fast",
                    "--format", "csv", "--output", out, "--caption", "x")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows[0] == ["source", "mode", "prompt", "caption", "similarity", "clip_model", "caption_model",
                       "negative_prompt", "weak_match", "fingerprint"]
    assert len(rows) == 3
    assert [r[0] for r in rows[1:]] == [str(image_folder / "a.png"), str(image_folder / "c.webp")]
    assert all(r[1] == "fast" and float(r[4]) for r in rows[1:])
    assert rows[1][9] and rows[1][9] == rows[2][9]  # the same settings and models: the same fingerprint


def test_batch_failure_is_reported_per_image_and_run_continues(
        image_folder: Path, model_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from image2prompt.interrogator import Interrogator

    real = Interrogator.encode
    calls: list[list[str]] = []

    def flaky(self, images, captions=None, *, sources=None, **kw):  # type: ignore[no-untyped-def]
        calls.append([Path(s).name for s in sources])
        if any(Path(s).name == "a.png" for s in sources):
            raise RuntimeError("boom")
        return real(self, images, captions, sources=sources, **kw)

    monkeypatch.setattr(Interrogator, "encode", flaky)
    result = invoke(image_folder, *model_args, "--mode", "fast", "--caption", "x", "--format", "jsonl",
                    "--batch-size", "2")
    assert result.exit_code == 1
    # broken.jpg fails to load; batch 1 = a.png + c.webp fails on "boom", so each is retried alone
    # and only a.png fails; batch 2 = sub/b.JPG
    assert calls == [["a.png", "c.webp"], ["a.png"], ["c.webp"], ["b.JPG"]]
    assert [json.loads(line)["source"] for line in result.stdout.splitlines()] == [
        str(image_folder / "c.webp"), str(image_folder / "sub" / "b.JPG")]
    errors = [line for line in result.stderr.splitlines() if line.startswith("image2prompt: error:")]
    assert any("a.png" in e and "boom" in e for e in errors)
    assert any("broken.jpg" in e for e in errors)
    assert len(errors) == 2
    # in input order: a.png's error comes before broken.jpg's
    assert "a.png" in errors[0] and "broken.jpg" in errors[1]
    assert_no_traceback(result)


def test_library_error_stops_the_run(image_folder: Path, model_args: list[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from image2prompt.errors import VocabularyError
    from image2prompt.interrogator import Interrogator

    def broken(self, *args, **kw):  # type: ignore[no-untyped-def]
        raise VocabularyError("the flavors table is unreadable")

    monkeypatch.setattr(Interrogator, "search_indexed", broken)
    result = invoke(image_folder, *model_args, "--mode", "fast", "--caption", "x", "--format", "jsonl",
                    "--batch-size", "2")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1] == "image2prompt: error: stopping: the flavors table is unreadable"
    failed = [line for line in lines if "could not interrogate" in line]
    assert len(failed) == 2 and "a.png" in failed[0] and "c.webp" in failed[1]
    assert_no_traceback(result)


def test_debug_shows_traceback(tmp_path: Path, image: Path) -> None:
    result = CliRunner().invoke(cli, [str(image), "--clip", "ViT-L-14/nonsense", "--caption-model", "none",
                                      "--caption", "x", "--device", "cpu", "--debug"])
    assert result.exit_code == 1
    assert result.exception is not None and "nonsense" in str(result.exception)


def test_verbose_logs_to_stderr(image: Path, tiny_open_clip: Path, small_vocab_dir: Path, tmp_path: Path) -> None:
    result = invoke(image, "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption", "x",
                    "--vocab", small_vocab_dir, "--device", "cpu", "--cache-dir", tmp_path, "--mode", "fast",
                    "--verbose")
    assert result.exit_code == 0, result.output
    assert "image2prompt: info: loading CLIP" in result.stderr
    assert "info" not in result.stdout
    # the embeddings were cached under --cache-dir
    assert list(tmp_path.glob("*.safetensors"))


def test_issue4_options_together(image: Path, tiny_open_clip: Path, tiny_hf_clip: Path, small_vocab_dir: Path,
                                 tmp_path: Path) -> None:
    """Two encoders, turbo, paired negative, beam and weighted output in one run."""
    result = invoke(
        str(image), "--clip", f"local-dir:{tiny_open_clip}", "--clip", str(tiny_hf_clip), "--caption", "a thing",
         "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(tmp_path), "--mode", "turbo",
         "--negative", "--beam", "2", "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "turbo" and " + " in data["clip_model"]
    assert data["negative"]["mode"] == "negative" and data["negative"]["prompt"]
    assert all("margin" in p and "weight" in p for p in data["phrases"])
    assert isinstance(data["weak_match"], bool)
    common = [str(image), "--clip", f"local-dir:{tiny_open_clip}", "--caption", "a thing", "--vocab",
              str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(tmp_path), "--mode", "classic", "--quiet"]
    plain = json.loads(invoke(*common, "--format", "json").stdout)
    weighted = invoke(*common, "--format", "weighted", "--negative")
    assert weighted.exit_code == 0, weighted.output
    first, second = weighted.stdout.splitlines()[:2]
    assert first.startswith("a thing")
    for p in plain["phrases"]:
        expected = p["text"] if p["weight"] == 1.0 else f"({p['text']}:{p['weight']:.2f})"
        assert expected in first
    assert second.startswith("Negative prompt: ")


def test_style_mode_and_chunks(image: Path, tiny_open_clip: Path, small_vocab_dir: Path, tmp_path: Path) -> None:
    style = invoke(str(image), "--clip", f"local-dir:{tiny_open_clip}", "--caption", "a red fox in the snow",
                    "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(tmp_path),
                    "--mode", "style", "--format", "json", "--quiet")
    assert style.exit_code == 0, style.output
    data = json.loads(style.stdout)
    assert data["prompt"] and "fox" not in data["prompt"] and "a red fox" not in data["prompt"]
    long = invoke(str(image), "--clip", f"local-dir:{tiny_open_clip}", "--caption", "a thing " * 40,
                   "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(tmp_path),
                   "--mode", "fast", "--max-tokens", "150", "--chunks", "--quiet")
    assert long.exit_code == 0, long.output
    assert " BREAK " in long.stdout


@pytest.fixture
def tiny_args(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path: Path) -> list[str]:
    return ["--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption", "x",
            "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(tmp_path / "emb"),
            "--mode", "fast", "--format", "jsonl", "--quiet"]


def test_max_pixels_option_refuses_and_lifts(tmp_path: Path, tiny_args: list[str]) -> None:
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.new("RGB", (20, 10), (10, 200, 30)).save(path)

    refused = invoke(path, *tiny_args, "--max-pixels", "100")
    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr.strip() == (
        f"image2prompt: error: {path}: image too large (20×10 pixels, limit 100 pixels; "
        "raise it with --max-pixels N, or --max-pixels none)")
    assert_no_traceback(refused)

    lifted = invoke(path, *tiny_args, "--max-pixels", "none")
    assert lifted.exit_code == 0, lifted.output
    assert json.loads(lifted.stdout)["source"] == str(path)
    # the default (64,000,000 pixels) lets a small image through too; 1,000 is enough for 200 pixels
    assert invoke(path, *tiny_args).exit_code == 0
    assert invoke(path, *tiny_args, "--max-pixels", "1_000").exit_code == 0


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5"])
def test_max_pixels_bad_value_is_a_usage_error(image: Path, value: str) -> None:
    result = invoke(image, "--max-pixels", value)
    assert result.exit_code == 2
    assert "--max-pixels" in result.stderr and "expected a positive number of pixels or none" in result.stderr


def test_max_pixels_is_in_run_help() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0
    assert "--max-pixels N|none" in result.stdout and "64000000" in result.stdout


def test_verbose_names_files_skipped_in_a_folder(tmp_path: Path, tiny_args: list[str]) -> None:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not a picture")
    (folder / ".hidden.txt").write_text("secret")
    line = f"image2prompt: info: skipping {folder / 'notes.txt'}: not an image file Pillow can open"

    verbose = invoke(folder, *[a for a in tiny_args if a != "--quiet"], "-v")
    assert verbose.exit_code == 0, verbose.output
    assert line in verbose.stderr.splitlines()
    assert ".hidden.txt" not in verbose.stderr
    assert [json.loads(x)["source"] for x in verbose.stdout.splitlines()] == [str(folder / "a.png")]

    plain = invoke(folder, *[a for a in tiny_args if a != "--quiet"])
    assert plain.exit_code == 0, plain.output
    assert "skipping" not in plain.stderr


def test_folder_without_images_names_what_it_found(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "meta.json"):
        (folder / name).write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    # A bogus model name proves no model was loaded: the errors are about the inputs.
    result = invoke(folder, empty, "--clip", "ViT-L-14/nonsense", "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"image2prompt: error: {folder}: folder contains no images (found 3 files: .txt, .json)",
        f"image2prompt: error: {empty}: folder is empty",
    ]
    assert_no_traceback(result)


def test_speed_knobs_reach_the_search(image: Path, model_args: list[str], tiny_open_clip: Path,
                                      small_vocab_dir: Path) -> None:
    """--candidates and --flavors set the search: the fingerprint is the library's for those
    settings, and fast mode adds MAX phrases."""
    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.models.clip import load_clip
    from image2prompt.vocab import load_folder_pack

    result = invoke(image, *model_args, "--format", "json", "--mode", "fast", "--caption", "a cat",
                    "--candidates", "300", "--flavors", "2,5")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["phrases"]) == 5
    ci = Interrogator(load_clip(f"local-dir:{tiny_open_clip}", device="cpu"), None, load_folder_pack(small_vocab_dir),
                      None, Config(caption_model=None))
    want = SearchSettings(mode="fast", candidates=300, min_flavors=2, max_flavors=5)
    assert data["fingerprint"] == ci.fingerprint(want)
    assert data["fingerprint"] != ci.fingerprint(SearchSettings(mode="fast"))
    one = json.loads(invoke(image, *model_args, "--format", "json", "--mode", "fast", "--caption", "a cat",
                            "--flavors", "3").stdout)
    assert len(one["phrases"]) == 3


@pytest.mark.parametrize("value", ["5,2", "x", "1,2,3", "-1,4"])
def test_bad_flavors_are_a_usage_error(image: Path, model_args: list[str], value: str) -> None:
    result = invoke(image, *model_args, "--flavors", value)
    assert result.exit_code == 2 and "--flavors" in result.stderr
    assert_no_traceback(result)


def test_analyze_takes_max_pixels_too(tmp_path: Path, model_args: list[str]) -> None:
    from PIL import Image

    img = tmp_path / "wide.png"
    Image.new("RGB", (20, 10), (10, 20, 30)).save(img)
    refused = invoke("analyze", img, *model_args, "--max-pixels", "100")
    assert refused.exit_code == 1 and "image too large (20×10 pixels, limit 100 pixels" in refused.stderr
    assert invoke("analyze", img, *model_args, "--max-pixels", "none").exit_code == 0


def test_caption_precision_sets_the_captioner_alone(image_folder: Path, model_args: list[str]) -> None:
    """--caption-precision bf16 captions in bf16 while CLIP stays at --precision's fp32."""
    result = invoke(image_folder / "a.png", image_folder / "c.webp", *model_args, "--mode", "fast",
                    "--caption-precision", "bf16", "--batch-size", 2, "--format", "jsonl", "-v")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2 and all(json.loads(x)["caption"] for x in result.stdout.splitlines())
    assert "loading captioner" in result.stderr and " as bf16" in result.stderr.split("loading captioner")[1].splitlines()[0]
    assert " as fp32" in result.stderr.split("loading CLIP")[1].splitlines()[0]


def test_caption_precision_fp16_on_cpu_is_one_line(image: Path, model_args: list[str]) -> None:
    result = invoke(image, *model_args, "--caption-precision", "fp16")
    assert result.exit_code != 0
    assert "fp16 is not supported on CPU" in result.stderr
    assert_no_traceback(result)


def test_batch_size_reaches_both_models(tiny_open_clip: Path, tiny_blip: Path, small_vocab_dir: Path,
                                        tmp_path: Path) -> None:
    from image2prompt.cli.main import load_interrogator, model_config

    kw = dict(clip=[f"local-dir:{tiny_open_clip}"], captioner=f"local-dir:{tiny_blip}", device="cpu",
              precision="auto", cache_dir=str(tmp_path / "emb"), vocab=[str(small_vocab_dir)], low_vram=False)
    ic = load_interrogator(model_config(**kw, batch_size=3, caption_precision="bf16"), show_progress=False,
                           debug=False)
    assert (ic.config.caption_batch_size, ic.config.image_batch_size) == (3, 3)
    assert str(ic.captioner.dtype) == "torch.bfloat16" and str(ic.clips[0].dtype) == "torch.float32"
    default = load_interrogator(model_config(**kw, caption_precision=None), show_progress=False, debug=False)
    assert default.config.caption_batch_size == 16 and str(default.captioner.dtype) == "torch.float32"
