"""The captioner options: a VLM in-process, and one behind an OpenAI-compatible API, from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from image2prompt.batch.records import read_records
from image2prompt.cli.main import cli
from tests.conftest import make_images
from tests.support.fake_openai import Answer, FakeOpenAI, Status, fake_openai


@pytest.fixture
def common(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    emb = tmp_path_factory.getbasetemp() / "captioner-cli-emb"
    return ["--clip", f"local-dir:{tiny_open_clip}", "--vocab", str(small_vocab_dir), "--device", "cpu",
            "--cache-dir", str(emb), "--mode", "fast"]


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    d = tmp_path / "pics"
    d.mkdir()
    for i, im in enumerate(make_images(3, size=40)):
        im.resize((40 + i, 40)).save(d / f"{i}.png")  # widths 40, 41, 42: the fake server can tell them apart
    return d


def test_a_vlm_captions_in_process_and_its_prompt_is_in_the_fingerprint(common, pictures, tiny_llava, tmp_path):
    out = tmp_path / "out.jsonl"
    args = ["batch", str(pictures), "-o", str(out), *common, "--caption-model", f"local-dir:{tiny_llava}",
            "--caption-max-tokens", "6"]
    first = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    records = list(read_records(out))
    assert len(records) == 3 and all(r["ok"] and r["result"]["caption_model"] == f"local-dir:{tiny_llava}"
                                     for r in records)
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert "3 already done" in again.stderr
    other = CliRunner().invoke(cli, [*args, "--caption-type", "booru", "--caption-length", "20"],
                               catch_exceptions=False)
    assert other.exit_code == 0 and "3 done" in other.stderr  # another question: another fingerprint
    fingerprints = {r["fingerprint"] for r in read_records(out)}
    assert len(fingerprints) == 2


def test_a_caption_server_with_concurrency_from_the_command_line(common, pictures, monkeypatch, tmp_path):
    with fake_openai(FakeOpenAI(), monkeypatch=monkeypatch) as server:
        server.rule = lambda request: Answer("<think>hmm</think>This image shows a tiny test picture.")
        monkeypatch.setenv("IMAGE2PROMPT_CAPTION_API_KEY", "sk-test-secret")
        result = CliRunner().invoke(cli, ["run", str(pictures), *common, "--format", "json", "--caption-model",
                                          "openai:fake-vlm", "--caption-endpoint", server.url,
                                          "--caption-concurrency", "3", "--caption-prompt", "Describe {name}.",
                                          "--caption-name", "ohwx"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "sk-test-secret" not in result.output
        results = json.loads(result.stdout)
        assert [r["caption"] for r in results] == ["a tiny test picture"] * 3  # the answer, cleaned
        bodies = [c.body for c in server.chats]
        assert all(b["max_tokens"] == 96 and b["messages"][0]["content"][1]["text"] == "Describe ohwx."
                   for b in bodies)
        assert all(b["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/") for b in bodies)


def test_a_dead_caption_server_stops_the_run_in_one_line(common, pictures, monkeypatch, tmp_path):
    with fake_openai(FakeOpenAI(models_status=401), monkeypatch=monkeypatch) as server:
        result = CliRunner().invoke(cli, ["batch", str(pictures), "-o", str(tmp_path / "o.jsonl"), *common,
                                          "--caption-model", "openai:", "--caption-endpoint", server.url])
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert server.url in line and "Traceback" not in result.output
    assert not (tmp_path / "o.jsonl").exists() or not list(read_records(tmp_path / "o.jsonl"))


def test_one_bad_answer_fails_one_image(common, pictures, monkeypatch, tmp_path):
    with fake_openai(FakeOpenAI(), monkeypatch=monkeypatch) as server:
        server.rule = lambda request: Status(400) if request.image is not None and request.image.width == 41 \
            else Answer("a picture")
        out = tmp_path / "o.jsonl"
        result = CliRunner().invoke(cli, ["batch", str(pictures), "-o", str(out), *common, "--caption-model",
                                          "openai:fake-vlm", "--caption-endpoint", server.url])
    assert result.exit_code == 1, result.output  # one image failed
    ok = {Path(r["source"]).name: r["ok"] for r in read_records(out)}
    assert sorted(ok.values()) == [False, True, True]
