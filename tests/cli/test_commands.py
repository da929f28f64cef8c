"""Help, `models`, `cache` and `analyze`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from image2prompt.cli.main import cli


def invoke(*args: object, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def test_help_lists_commands_and_default_options() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    text = result.stdout
    assert "Usage: image2prompt [OPTIONS] PATH_OR_URL..." in text
    for word in ("analyze", "models", "cache", "--mode", "--clip", "--format", "scaffold"):
        assert word in text
    assert invoke("-h").stdout == text


def test_subcommand_help() -> None:
    for args in (["run", "--help"], ["analyze", "--help"], ["cache", "--help"], ["cache", "clear", "--help"]):
        result = invoke(*args)
        assert result.exit_code == 0, args
    assert "--top" in invoke("analyze", "--help").stdout


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("image2prompt ")


def _imports_torch(*args: str) -> tuple[int, str]:
    code = (
        "import sys\n"
        "from image2prompt.cli.main import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return proc.returncode, proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["--help"], ["models"], ["cache", "info"]])
def test_light_commands_do_not_import_torch(args: list[str]) -> None:
    rc, last = _imports_torch(*args)
    assert rc == 0
    assert last == "NO-TORCH 0"


def test_models_lists_names() -> None:
    result = invoke("models")
    assert result.exit_code == 0
    out = result.stdout
    for word in ("ViT-L-14/openai", "sd15", "sd2", "sdxl", "ViT-bigG-14/laion2b_s39b_b160k", "blip-large",
                 "blip-base", "local-dir:PATH", "hf-hub:ORG/REPO", "hf:ORG/REPO"):
        assert word in out
    assert "  ViT-L-14/laion2b_s32b_b82k" in out  # the open_clip table


def test_cache_info_prints_dirs_and_creates_nothing(tmp_path: Path) -> None:
    emb = tmp_path / "emb"
    result = invoke("cache", "info", "--cache-dir", emb)
    assert result.exit_code == 0
    assert str(emb) in result.stdout and "does not exist yet" in result.stdout
    assert "Model weights" in result.stdout
    assert not emb.exists()


def test_cache_info_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGE2PROMPT_CACHE_DIR", str(tmp_path / "c"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "m_flavors.safetensors").write_bytes(b"x" * 2048)
    result = invoke("cache", "info")
    assert str(tmp_path / "c") in result.stdout and "1 files, 2.0 KB" in result.stdout


def test_cache_clear(tmp_path: Path) -> None:
    d = tmp_path / "emb"
    d.mkdir()
    dummy = d / "ViT-L-14_openai_flavors.safetensors"
    dummy.write_bytes(b"0" * 100)
    keep = d / "notes.txt"
    keep.write_text("keep")
    # declining keeps the file
    result = invoke("cache", "clear", "--cache-dir", d, input="n\n")
    assert result.exit_code == 1 and dummy.exists()
    result = invoke("cache", "clear", "--cache-dir", d, "--yes")
    assert result.exit_code == 0
    assert not dummy.exists() and keep.exists()
    assert "Deleted 1 files" in result.stdout
    result = invoke("cache", "clear", "--cache-dir", d, "--yes")
    assert result.exit_code == 0 and "Nothing to clear" in result.stdout


@pytest.fixture
def analyze_args(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path: Path) -> list[str]:
    return ["--clip", f"local-dir:{tiny_open_clip}", "--vocab", str(small_vocab_dir), "--device", "cpu",
            "--cache-dir", str(tmp_path / "emb")]


def test_analyze_text(image_folder: Path, analyze_args: list[str]) -> None:
    result = invoke("analyze", image_folder / "a.png", "--top", 3, *analyze_args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for category in ("artists:", "mediums:", "movements:", "flavors:"):
        assert category in lines
    start = lines.index("artists:")
    artists = lines[start + 1:start + 4]
    assert len(artists) == 3 and all(a.startswith("  ") and "by " in a and "(hypothesis)" in a
                                     and a.split("(hypothesis)")[1] in ("", "  (below floor)") for a in artists)
    float(artists[0].split()[0])
    assert "negative:" not in lines


def test_analyze_json_with_caption(image_folder: Path, analyze_args: list[str]) -> None:
    result = invoke("analyze", image_folder / "a.png", "--format", "json", "--caption", "a cat", *analyze_args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["caption"] == "a cat"
    assert data["source"] == str(image_folder / "a.png")
    assert len(data["categories"]["flavors"]) == 5
    assert {"text", "category", "score", "hypothesis"} <= set(data["categories"]["artists"][0])


def test_analyze_with_captioner(image_folder: Path, analyze_args: list[str], tiny_blip: Path) -> None:
    result = invoke("analyze", image_folder / "a.png", "--format", "json", "--caption-model",
                    f"local-dir:{tiny_blip}", *analyze_args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["caption"]


def test_analyze_bad_image(image_folder: Path) -> None:
    result = invoke("analyze", image_folder / "broken.jpg", "--clip", "ViT-L-14/nonsense")
    assert result.exit_code == 1
    assert result.stderr.startswith("image2prompt: error: ") and "broken.jpg" in result.stderr
    assert "Traceback" not in result.output


def _cache_is_a_file_error(directory: Path, blocker: Path) -> str:
    where = "this is a file" if directory == blocker else f"{blocker} is a file"
    return (f"image2prompt: error: {directory}: the embedding cache must be a folder, but {where}; "
            "pass --cache-dir to use another folder\n")


def test_a_cache_dir_that_is_a_file_is_one_line_before_any_model_loads(
        image_folder: Path, tiny_open_clip: Path, small_vocab_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "SOMEFILE"
    blocker.write_text("not a folder")
    run_args = [image_folder / "a.png", "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none",
                "--caption", "x", "--vocab", small_vocab_dir, "--device", "cpu"]
    for directory in (blocker, blocker / "sub"):
        for args in ([*run_args, "--cache-dir", directory],
                     ["analyze", *run_args, "--cache-dir", directory],
                     ["cache", "clear", "--yes", "--cache-dir", directory]):
            result = invoke(*args)
            assert result.exit_code == 1, args
            assert result.stderr == _cache_is_a_file_error(directory, blocker), args
            assert result.stdout == "" and blocker.read_text() == "not a folder"
    # the default folder, from the environment, is checked the same way
    monkeypatch.setenv("IMAGE2PROMPT_CACHE_DIR", str(blocker))
    result = invoke(*run_args)
    assert result.exit_code == 1 and result.stderr == _cache_is_a_file_error(blocker, blocker)


def test_cache_info_says_a_file_is_not_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "SOMEFILE"
    blocker.write_text("x")
    result = invoke("cache", "info", "--cache-dir", blocker)
    assert result.exit_code == 0 and result.stderr == ""
    first = result.stdout.splitlines()[0]
    assert first == f"Vocabulary embeddings: {blocker}  (not a directory: this is a file)"
    result = invoke("cache", "info", "--cache-dir", blocker / "sub")
    assert result.stdout.splitlines()[0] == (f"Vocabulary embeddings: {blocker / 'sub'}  "
                                             f"(cannot be created: {blocker} is a file)")
    monkeypatch.setenv("IMAGE2PROMPT_CACHE_DIR", str(blocker))
    assert "(not a directory: this is a file)" in invoke("cache", "info").stdout
    assert blocker.read_text() == "x"


def test_a_rejected_cache_file_is_one_warning_line(image_folder: Path, tiny_open_clip: Path,
                                                   small_vocab_dir: Path, tmp_path: Path) -> None:
    """open_clip logs through logging.info, which gives the root logger a handler: the CLI's own
    warnings must not reach it too, or each one is printed twice."""
    import logging

    emb = tmp_path / "emb"
    args = [image_folder / "a.png", "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none",
            "--caption", "x", "--vocab", small_vocab_dir, "--device", "cpu", "--cache-dir", emb, "--mode", "fast"]
    assert invoke(*args).exit_code == 0
    flavors = next(emb.glob("*_flavors_*.safetensors"))
    flavors.write_bytes(flavors.read_bytes()[:100])

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    root_handler = Collect()
    logging.getLogger().addHandler(root_handler)
    try:
        result = invoke(*args)
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"image2prompt: warning: embedding cache file {flavors} is corrupt "
                                  "(not a complete safetensors file")
    assert warnings[0].endswith("; recomputing it")
    assert [r for r in root_handler.records if r.name.startswith("image2prompt")] == []
