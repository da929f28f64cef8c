"""Speed of the VLM captioners: batched in-process generation, and a caption server overlapping CLIP.

Two measurements, on random-weight VLMs built here into a temporary folder (a Llava, the
architecture of JoyCaption, and optionally a Qwen2-VL, larger than the tests' so generation
cost shows; ``--hidden``, ``--layers``). Their generation config sets ``min_new_tokens`` to
``--max-new-tokens``, so every caption is exactly that many tokens long whatever the random
weights would pick (a random model may stop at EOS early): batch sizes and stages compare
like for like. Random weights measure speed only, never caption quality.

1. **generate**: ``load_captioner("local-dir:...")`` then ``.caption(images, batch_size=B)`` over
   ``--gen-images`` images for each ``--batch-sizes`` B; images/s (median of ``--repeats``
   runs, after one untimed warm-up batch) and the ratio to the first batch size.
2. **remote**: a real ``transformers serve`` on loopback serving the Llava folder
   (``tests/support/fake_openai.serve_transformers``), the tiny open_clip model and a small
   vocabulary, fast mode, ``--remote-images`` PNG files in a folder. Timed, each
   ``--repeats`` times (median): (a) the captioning stage alone,
   ``RemoteCaptioner.caption(images)`` with ``--concurrency`` requests in flight; (b) the CLIP
   stage alone, a :class:`~image2prompt.batch.BatchJob` over the folder with a given caption
   (``--caption-model none --caption x``); (c) the same BatchJob captioning through the
   server. Models are loaded and tables built before any clock starts; the captioner's
   answer memo is emptied before each timed run, so every caption is generated. The report
   compares (c) with max(a, b) (the stages fully overlapped) and with a + b (one after the other).

    python bench/captioners.py              # both parts: 7 min on 2 busy CPU cores (first run builds b32)
    python bench/captioners.py --clip tiny  # the remote part with the tests' tiny CLIP only
    python bench/captioners.py --parts generate --models llava,qwen2-vl --repeats 5
    python bench/captioners.py --parts remote --remote-images 96 --concurrency 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, command_line, ensure_models, machine_info, make_images, markdown_table, offline_env

offline_env()

from tests.support import tiny_models, vlms  # noqa: E402  (after offline_env: no network)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="generate,remote", help="generate, remote or both")
    p.add_argument("--models", default="llava,qwen2-vl", help="generate: llava and/or qwen2-vl")
    p.add_argument("--hidden", type=int, default=256, help="the text model's hidden size (the tests': 64)")
    p.add_argument("--layers", type=int, default=4, help="the text model's layers (the tests': 2)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="every caption's length, in tokens")
    p.add_argument("--gen-images", type=int, default=32, help="generate: images captioned per run")
    p.add_argument("--batch-sizes", default="1,8", help="generate: the batch sizes compared")
    p.add_argument("--remote-images", type=int, default=48, help="remote: images in the batch folder")
    p.add_argument("--clip", default="tiny,b32",
                   help="remote: CLIP models, one measurement each: tiny (the tests') and/or b32, l14 "
                        "(random weights at ViT-B/32, ViT-L/14 tower sizes, kept in .bench-out/models)")
    p.add_argument("--mode", default="fast", help="remote: the batch run's --mode")
    p.add_argument("--concurrency", type=int, default=4, help="remote: --caption-concurrency")
    p.add_argument("--batch-size", type=int, default=16, help="remote: the batch run's --batch-size")
    p.add_argument("--image-size", type=int, default=64, help="pixels per side of the generated images")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement (median reported)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in this process (0: torch's default; the server always runs with 1)")
    p.add_argument("--work-dir", default=None, help="where models and images go (default: a temporary folder)")
    p.add_argument("--markdown-out", default=None)
    return p.parse_args(argv)


# -- models ---------------------------------------------------------------------------------------
def _text(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's text model: larger than the tests', so generation costs something."""
    return dict(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                num_attention_heads=4, num_key_value_heads=2)


def make_llava(out: Path, args: argparse.Namespace) -> Path:
    """``vlms.make_llava_dir``'s Llava with a larger text model and a 64-pixel, 64-patch vision tower."""
    return vlms.make_llava_dir(out, side=64, vision_hidden=128, vision_heads=4, text=_text(args),
                               min_new_tokens=args.max_new_tokens)


def make_qwen2_vl(out: Path, args: argparse.Namespace) -> Path:
    """``vlms.make_qwen2_vl_dir``'s Qwen2-VL with a larger text model; every image 64x64 (16 tokens)."""
    head = args.hidden // 4
    third = head // 2 // 3
    return vlms.make_qwen2_vl_dir(out, text=_text(args), vision=dict(embed_dim=64, hidden_size=args.hidden, num_heads=4),
                                  mrope=(head // 2 - 2 * third, third, third), pixels=(64 * 64, 64 * 64),
                                  min_new_tokens=args.max_new_tokens)


BUILDERS = {"llava": make_llava, "qwen2-vl": make_qwen2_vl}


def _params(folder: Path) -> float:
    """Millions of parameters in the folder's safetensors files."""
    from safetensors import safe_open

    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                size = 1
                for d in st.get_slice(k).get_shape():
                    size *= d
                n += size
    return n / 1e6


# -- 1. batched in-process generation --------------------------------------------------------------
def bench_generate(name: str, folder: Path, args: argparse.Namespace, log: Any) -> list[list[Any]]:
    from image2prompt.models.captioners import load_captioner

    cap = load_captioner(f"local-dir:{folder}", device="cpu", precision="fp32", max_new_tokens=args.max_new_tokens)
    new_tokens = [0]
    generate = cap.model.generate

    def counting(**kw: Any) -> Any:  # new token positions, per row (the prompt comes back first)
        out = generate(**kw)
        new_tokens[0] += (out.shape[1] - kw["input_ids"].shape[1]) * out.shape[0]
        return out

    cap.model.generate = counting
    images = make_images(args.gen_images, size=args.image_size)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows: list[list[Any]] = []
    base = None
    for b in sizes:
        cap.caption(images[:b], batch_size=b)  # warm-up
        times, cpu = [], []
        for r in range(args.repeats):
            new_tokens[0] = 0
            t0, c0 = time.perf_counter(), time.process_time()
            caps = cap.caption(images, batch_size=b)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert len(caps) == len(images)
            log(f"  {name} batch {b} run {r + 1}: {times[-1]:.2f} s, {new_tokens[0] / len(images):.1f} tokens/image")
        med = statistics.median(times)
        rate = len(images) / med
        base = base or rate
        rows.append([name, f"{_params(folder):.1f}M", b, len(images), new_tokens[0] / len(images),
                     " / ".join(f"{t:.2f}" for t in times), f"{statistics.median(cpu):.2f}", f"{rate:.2f}",
                     f"{rate * new_tokens[0] / len(images):.0f}", f"{rate / base:.2f}x"])
    return rows


# -- 2. remote captioning overlapping CLIP ------------------------------------------------------------
def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's child processes, recursively, as they run."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                try:
                    fields = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                total += (int(fields[11]) + int(fields[12])) / tick
                todo.append(int(kid))
    return total


def bench_remote(folder: Path, work: Path, args: argparse.Namespace, log: Any) -> tuple[list[list[Any]], list[str]]:
    from PIL import Image

    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.batch.engine import BatchJob
    from tests.conftest import SMALL_VOCAB
    from tests.support.fake_openai import serve_transformers, transformers_cli

    if transformers_cli() is None:
        raise SystemExit("transformers serve is not installed (pip install 'transformers[serving]')")
    clips: dict[str, Path] = {}
    for size in [c.strip() for c in args.clip.split(",") if c.strip()]:
        if size == "tiny":
            clips[size] = tiny_models.make_open_clip_dir(work / "tiny-open-clip")
        else:  # a real tower size, built once under .bench-out/models and reused by the other benchmarks
            clips[size] = ensure_models(REPO_ROOT / ".bench-out" / "models", [size], log=log)[size]
    vocab = work / "vocab"
    vocab.mkdir(exist_ok=True)
    for cat, lines in SMALL_VOCAB.items():
        (vocab / f"{cat}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    images_dir = work / "remote-images"
    images_dir.mkdir(exist_ok=True)
    for i, im in enumerate(make_images(args.remote_images, size=args.image_size, seed=99)):
        im.save(images_dir / f"{i:04d}.png")
    files = sorted(images_dir.glob("*.png"))
    decoded = [Image.open(f).convert("RGB") for f in files]
    warm = make_images(4, size=args.image_size, seed=7)  # other pixels: never answered from the memo
    settings = SearchSettings(mode=args.mode)
    n = len(files)
    rows: list[list[Any]] = []
    notes: list[str] = []

    t_start = time.perf_counter()
    with serve_transformers(folder, log_path=work / "serve.log") as url:
        log(f"  transformers serve up in {time.perf_counter() - t_start:.1f} s at {url}")
        for size, clip_dir in clips.items():
            cfg = Config(clip_model=f"local-dir:{clip_dir}", caption_model="openai:", caption_endpoint=url,
                         caption_concurrency=args.concurrency, caption_max_tokens=args.max_new_tokens,
                         vocab=[str(vocab)], device="cpu", precision="fp32", cache_dir=str(work / "cache"),
                         download_cache=False)
            ic = Interrogator.load(cfg)
            ic.prepare()
            remote = ic.captioner
            remote.caption(warm)  # the server's first requests (its model loads on the first one)
            list(ic.search_indexed(ic.encode(warm[:2], ["x", "x"]), settings))

            def caption_stage(remote: Any = remote) -> float:
                remote._memo.clear()  # every caption generated, none answered from the captioner's memo
                t0 = time.perf_counter()
                caps = remote.caption(decoded)
                assert len(caps) == len(decoded) and all(caps)
                return time.perf_counter() - t0

            def batch_run(tag: str, caption: str | None, ic: Any = ic, remote: Any = remote) -> float:
                remote._memo.clear()
                job = BatchJob([str(images_dir)], work / f"run-{tag}.jsonl", interrogator=ic, settings=settings,
                               caption=caption, batch_size=args.batch_size, log_every=1e9)
                t0 = time.perf_counter()
                stats = job.run()
                secs = time.perf_counter() - t0
                assert stats.written == n and not stats.failed, stats.summary()
                return secs

            timed: dict[str, list[float]] = {"a": [], "b": [], "c": []}
            cpu: dict[str, list[tuple[float, float]]] = {"a": [], "b": [], "c": []}
            for r in range(args.repeats):  # interleaved, so a drift in machine load touches each alike
                for key in "abc":
                    c0, s0 = time.process_time(), _children_cpu()
                    timed[key].append(caption_stage() if key == "a" else
                                      batch_run(f"{size}-{key}{r}", "x" if key == "b" else None))
                    cpu[key].append((time.process_time() - c0, _children_cpu() - s0))
                    log(f"  {size} run {r + 1} ({key}): {timed[key][-1]:.2f} s; CPU s: this process "
                        f"{cpu[key][-1][0]:.2f}, server {cpu[key][-1][1]:.2f}")
            remote.close()
            a, b, c = (statistics.median(timed[k]) for k in "abc")

            def cpu_of(key: str, cpu: dict[str, list[tuple[float, float]]] = cpu) -> str:
                return (f"{statistics.median(x for x, _ in cpu[key]):.2f} + "
                        f"{statistics.median(y for _, y in cpu[key]):.2f}")

            for label, ts, med, cpu_s in (
                    ["(a) captioning alone: RemoteCaptioner.caption", timed["a"], a, cpu_of("a")],
                    ["(b) CLIP alone: batch, --caption-model none --caption x", timed["b"], b, cpu_of("b")],
                    ["(c) whole batch run, captions from the server", timed["c"], c, cpu_of("c")],
                    ["max(a, b): the stages overlapped", None, max(a, b), ""],
                    ["a + b: one after the other", None, a + b, ""]):
                rows.append([size, label, " / ".join(f"{t:.2f}" for t in ts) if ts else "—", f"{med:.2f}",
                             f"{n / med:.2f}", cpu_s])
            notes.append(f"CLIP {size}: (c) / max(a, b) = {c / max(a, b):.2f} (target: at most 1.15); "
                         f"(c) / (a + b) = {c / (a + b):.2f}; overlap = (a + b - c) / min(a, b) = "
                         f"{(a + b - c) / min(a, b):.2f} (1: the faster stage fully hidden, 0: none)")
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="i2p-bench-captioners-")
    work = Path(args.work_dir or tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    notes: list[str] = []
    tables: list[str] = []
    try:
        gen_models = [m.strip() for m in args.models.split(",") if m.strip()] if "generate" in parts else []
        models = list(dict.fromkeys(gen_models + (["llava"] if "remote" in parts else [])))
        folders = {}
        for m in models:
            t0 = time.perf_counter()
            folders[m] = BUILDERS[m](work / m, args)
            log(f"built {m} ({_params(folders[m]):.1f}M parameters) in {time.perf_counter() - t0:.1f} s")
        if "generate" in parts:
            rows = []
            for m in gen_models:
                log(f"generate: {m}")
                rows += bench_generate(m, folders[m], args, log)
            tables.append("**Batched in-process generation** (`load_captioner(\"local-dir:...\")` then "
                          f"`.caption(images, batch_size=B)`, {args.gen_images} images of {args.image_size} px, "
                          f"{args.max_new_tokens} new tokens each, median of {args.repeats}):\n\n" + markdown_table(
                              ["model", "params", "batch", "images", "new tokens/image", "runs (s)", "CPU s (median)",
                               "images/s (median)", "tokens/s", "vs first"], rows) + "\n")
        if "remote" in parts:
            log("remote: starting transformers serve")
            rows, remote_notes = bench_remote(folders["llava"], work, args, log)
            notes += remote_notes
            tables.append(f"**Caption server vs CLIP** (`transformers serve` on loopback, Llava above, "
                          f"{args.remote_images} PNG images of {args.image_size} px, {args.mode} mode, "
                          f"small vocabulary, --caption-concurrency {args.concurrency}, --batch-size {args.batch_size}, "
                          f"max_tokens {args.max_new_tokens}, median of {args.repeats}):\n\n"
                          + markdown_table(["CLIP", "stage", "runs (s)", "seconds (median)", "images/s",
                                            "CPU s: this process + server (median)"], rows) + "\n")
    finally:
        if tmp is not None:
            tmp.cleanup()
    notes.append(f"total wall time {time.perf_counter() - t_all:.0f} s")
    info = machine_info("cpu")
    text = "\n".join([f"command: `{command_line()}`", "machine: " + ", ".join(f"{k}: {v}" for k, v in info.items()),
                      *notes, "", *tables])
    print(text)
    if args.markdown_out:
        Path(args.markdown_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
