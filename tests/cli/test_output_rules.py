"""What `run` writes and where, and the hints its errors give (issue 28): the output's shape
follows the command line, -o's extension sets the format, weighted output escapes A1111
syntax, --beam outside chain modes is warned about, and error hints name the CLI's options
and every mode that needs no caption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from image2prompt.cli.main import cli
from image2prompt.errors import CaptionRequired
from image2prompt.modes import beam_modes, caption_free_modes
from tests.conftest import make_images


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def tiny_args(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    emb = tmp_path_factory.getbasetemp() / "output-rules-emb"  # shared: the vocabulary is embedded once
    return ["--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none", "--caption", "x",
            "--vocab", str(small_vocab_dir), "--device", "cpu", "--cache-dir", str(emb), "--mode", "fast",
            "--quiet"]


@pytest.fixture
def one_image_folder(tmp_path: Path) -> Path:
    d = tmp_path / "one"
    d.mkdir()
    make_images(1)[0].save(d / "a.png")
    return d


# --- the shape follows the command line -------------------------------------------------------


def test_json_of_a_folder_is_an_array_even_with_one_image(one_image_folder: Path, tiny_args: list[str]) -> None:
    result = invoke(one_image_folder, *tiny_args, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, list) and [d["source"] for d in data] == [str(one_image_folder / "a.png")]


def test_json_of_a_glob_is_an_array_even_with_one_match(one_image_folder: Path, tiny_args: list[str]) -> None:
    result = invoke(one_image_folder / "*.png", *tiny_args, "--format", "json")
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), list)


def test_json_of_one_file_is_an_object(one_image_folder: Path, tiny_args: list[str]) -> None:
    result = invoke(one_image_folder / "a.png", *tiny_args, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == str(one_image_folder / "a.png")


def test_json_of_a_folder_whose_only_file_fails_is_an_empty_array(tmp_path: Path, tiny_args: list[str]) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "broken.png").write_bytes(b"not a png")
    result = invoke(d, *tiny_args, "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == []
    assert "broken.png" in result.stderr and result.stderr.startswith("image2prompt: error: ")


def test_one_failing_file_writes_no_object(tmp_path: Path, tiny_args: list[str]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    result = invoke(bad, *tiny_args, "--format", "json")
    assert result.exit_code == 1
    assert result.stdout == "" and "broken.png" in result.stderr  # as documented in --help and the README


def test_text_of_a_folder_is_source_tab_prompt_even_with_one_image(one_image_folder: Path,
                                                                   tiny_args: list[str]) -> None:
    result = invoke(one_image_folder, *tiny_args)
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[0] == str(one_image_folder / "a.png")


def test_help_states_the_shape_rule() -> None:
    text = " ".join(invoke("run", "--help").stdout.split())
    assert "One file or URL on the command line gives the prompt alone (json: one object)" in text
    assert "(json: an array of the results, [] if none)" in text


# --- -o's extension sets the format --------------------------------------------------------------


def test_output_extension_sets_the_format(one_image_folder: Path, tiny_args: list[str], tmp_path: Path) -> None:
    image = one_image_folder / "a.png"
    for name in ("p.jsonl", "p.ndjson"):
        result = invoke(image, *tiny_args, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        lines = (tmp_path / name).read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["source"] == str(image)
    assert invoke(image, *tiny_args, "-o", tmp_path / "p.json").exit_code == 0
    assert json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["source"] == str(image)
    assert invoke(image, *tiny_args, "-o", tmp_path / "p.csv").exit_code == 0
    assert (tmp_path / "p.csv").read_text(encoding="utf-8").startswith("source,mode,prompt,")
    assert invoke(image, *tiny_args, "-o", tmp_path / "p.txt").exit_code == 0
    assert (tmp_path / "p.txt").read_text(encoding="utf-8").startswith("x, ")
    # --format wins over the extension
    assert invoke(image, *tiny_args, "-o", tmp_path / "q.jsonl", "--format", "text").exit_code == 0
    assert (tmp_path / "q.jsonl").read_text(encoding="utf-8").startswith("x, ")


def test_run_refuses_parquet_output_as_a_usage_error(one_image_folder: Path, tiny_args: list[str],
                                                     tmp_path: Path) -> None:
    result = invoke(one_image_folder / "a.png", *tiny_args, "-o", tmp_path / "p.parquet")
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and "image2prompt batch" in result.stderr
    assert not (tmp_path / "p.parquet").exists()


def test_batch_unknown_output_extension_is_a_usage_error(one_image_folder: Path, tiny_args: list[str],
                                                         tmp_path: Path) -> None:
    result = invoke("batch", one_image_folder, "-o", tmp_path / "out.txt", *tiny_args)
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"image2prompt: error: {tmp_path / 'out.txt'}: cannot tell the output format from "
                             "the extension .txt; use .jsonl, .csv or .parquet, or --format\n")
    assert not (tmp_path / "out.txt").exists()


# --- weighted output escapes A1111 syntax -----------------------------------------------------------


def test_weighted_output_escapes_parentheses(one_image_folder: Path, tiny_args: list[str]) -> None:
    args = [a if a != "x" else "a cat (tabby) [1937]" for a in tiny_args]
    result = invoke(one_image_folder / "a.png", *args, "--format", "weighted")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(r"a cat \(tabby\) \[1937\], ")


# --- --beam outside the chain modes --------------------------------------------------------------


def test_beam_in_a_mode_without_one_is_warned_about_once(one_image_folder: Path, tiny_args: list[str]) -> None:
    loud = [a for a in tiny_args if a != "--quiet"]
    result = invoke(one_image_folder / "a.png", *loud, "--beam", "4", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == ["image2prompt: warning: --beam 4 is ignored: fast mode has no beam "
                        "(only best and turbo modes do)"]
    assert beam_modes() == ["best", "turbo"]
    quiet = invoke(one_image_folder / "a.png", *tiny_args, "--beam", "4", "--format", "jsonl")
    assert quiet.exit_code == 0 and "--beam" not in quiet.stderr
    plain = invoke(one_image_folder / "a.png", *loud, "--format", "jsonl")
    assert "--beam" not in plain.stderr


# --- error hints ------------------------------------------------------------------------------------


@pytest.fixture
def wide(tmp_path: Path) -> Path:
    path = tmp_path / "wide.png"
    Image.new("RGB", (20, 10), (10, 200, 30)).save(path)
    return path


def test_pixel_limit_errors_name_the_option(wide: Path, tiny_args: list[str], tmp_path: Path) -> None:
    hint = "raise it with --max-pixels N, or --max-pixels none"
    run = invoke(wide, *tiny_args, "--max-pixels", "100")
    assert run.exit_code == 1 and hint in run.stderr, run.stderr
    analyze = invoke("analyze", wide, *tiny_args[:-3], "--max-pixels", "100")  # analyze has no --mode, --quiet
    assert analyze.exit_code == 1 and hint in analyze.stderr, analyze.stderr
    batch = invoke("batch", wide, "-o", tmp_path / "out.jsonl", *tiny_args, "--max-pixels", "100")
    assert batch.exit_code == 1 and hint in batch.stderr, batch.stderr


def test_the_library_message_stays_front_end_neutral(wide: Path) -> None:
    from image2prompt.errors import ImageLoadError
    from image2prompt.io import load_image

    with pytest.raises(ImageLoadError) as err:
        load_image(wide, max_pixels=100)
    assert err.value.kind == "too_large" and "--" not in str(err.value)


def test_missing_caption_hint_names_every_mode_that_needs_none(one_image_folder: Path,
                                                              tiny_open_clip: Path) -> None:
    assert caption_free_modes() == ["negative", "style"]
    for command in (["run"], ["batch", "-o", one_image_folder.parent / "o.jsonl"]):
        result = invoke(*command, one_image_folder, "--clip", f"local-dir:{tiny_open_clip}",
                        "--caption-model", "none", "--mode", "fast")
        assert result.exit_code == 2
        message = str(CaptionRequired("fast", caption_free=caption_free_modes()))  # the one message, every front end
        assert f"Error: {message}\n" in result.stderr
        assert "fast mode needs a caption" in message and message.endswith("(or use negative or style mode)")


def test_style_mode_runs_without_a_caption(one_image_folder: Path, tiny_open_clip: Path,
                                           small_vocab_dir: Path, tmp_path: Path) -> None:
    result = invoke(one_image_folder / "a.png", "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none",
                    "--vocab", small_vocab_dir, "--device", "cpu", "--cache-dir", tmp_path, "--mode", "style",
                    "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prompt"]
