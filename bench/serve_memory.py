"""Memory of ``image2prompt serve`` under waves of large uploads: RSS before, at the peak, and after.

Issue 28: 32 to 64 concurrent PNGs of about 35 KB each, 6000×6000 pixels (just under the
36 MP limit), took a server's RSS from 0.9 GB to 3.8 and 7.3 GB, and it never came back
down. This starts a real server (``python -m image2prompt serve``, one torch thread) for each
source tree given with ``--src`` (default: this checkout's ``src``; pass an older tree, e.g.
``git archive HEAD src | tar -x -C /tmp/base``, to compare with the code before a change),
sends one small warm-up request, then for each wave in ``--waves`` posts that many uploads at
once (POST /v1/interrogate, multipart, fast mode with a caption given) and reads the server's
RSS (VmRSS) before the wave, every 0.05 s during it (the peak) and ``--settle`` seconds after
the last answer (after). Waves run one after the other in the same server.

The CLIP model is a tiny random one whose input side is ``--input-side`` (224: ViT-L/14's;
384 is BLIP-large's), with no captioner, so the images are reduced to what a real model needs.
``--variant NAME=SRC[:notrim]`` runs a tree with ``trim_memory`` replaced by a no-op, to measure
what glibc keeps without it.

    python bench/serve_memory.py                                  # waves 32,64 on this checkout
    python bench/serve_memory.py --variant before=/tmp/base/src --variant after=src \\
        --variant after-notrim=src:notrim
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, emit_report, offline_env
from serve_load import free_port, log_tail, rss_mib, stop, wait_ready

BOUNDARY = "image2promptmemorybench1c9e"
NO_TRIM = ("import image2prompt.io.images as m; m.trim_memory = lambda: False; "
           "from image2prompt.__main__ import main; main()")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--waves", default="32,64", help="concurrent uploads per wave, in order")
    p.add_argument("--size", type=int, default=6000, help="pixels per side of the uploaded PNG")
    p.add_argument("--image-mode", default="L", choices=["L", "RGB"],
                   help="PNG colour mode (L: a 6000x6000 upload of about 35 KB, as in the issue)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after a wave before 'after' is read")
    p.add_argument("--input-side", type=int, default=224, help="the tiny CLIP's image size")
    p.add_argument("--variant", action="append", default=None, metavar="NAME=SRC[:notrim]",
                   help="a source tree to run the server from (repeatable); default: this checkout")
    p.add_argument("--max-queue", type=int, default=128, help="the server's --max-queue")
    p.add_argument("--work-dir", default=None, help="models, cache and logs (default: a temp folder)")
    p.add_argument("--json", default=None, metavar="FILE", help="save the raw numbers here")
    p.add_argument("--markdown-out", default=None, metavar="FILE", help="also write the report here")
    p.add_argument("--runner-images", type=int, default=0, metavar="N",
                   help="instead of a server: run the library's Runner (what `image2prompt batch` uses) over N "
                        "such PNG files, in a fresh process per variant, and report its peak and final RSS")
    return p.parse_args(argv)


def make_model(work: Path, side: int) -> str:
    from tests.support import tiny_models

    d = work / f"tiny-clip-{side}"
    if not (d / "open_clip_model.safetensors").exists():
        cfg = json.loads(json.dumps(tiny_models.TINY_OPEN_CLIP))
        cfg["vision_cfg"].update(image_size=side, patch_size=32)
        tiny_models.make_open_clip_dir(d, cfg)
    return f"local-dir:{d}"


def make_vocab(work: Path) -> str:
    from tests.conftest import SMALL_VOCAB

    d = work / "vocab"
    d.mkdir(parents=True, exist_ok=True)
    for name, lines in SMALL_VOCAB.items():
        (d / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(d)


def png(size: int, mode: str) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new(mode, (size, size), 200 if mode == "L" else (200, 180, 150))
    draw = ImageDraw.Draw(im)
    for k in range(8):  # a few shapes, so it is not one colour
        box = (k * size // 10, k * size // 12, k * size // 10 + size // 6, k * size // 12 + size // 7)
        draw.rectangle(box, fill=30 * k if mode == "L" else (30 * k, 100, 255 - 30 * k))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def body(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"mode\"\r\n\r\nfast\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\na photo\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def wave(base: str, pid: int, payload: bytes, n: int, settle: float) -> dict[str, Any]:
    import httpx

    before = rss_mib(pid)
    samples: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            v = rss_mib(pid)
            if v is not None:
                samples.append(v)
            await asyncio.sleep(0.05)

    statuses: dict[int, int] = {}
    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=600, limits=limits) as http:
        async def one() -> None:
            r = await http.post("/v1/interrogate", content=payload,
                                headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        await asyncio.gather(*(one() for _ in range(n)))
    seconds = time.perf_counter() - start
    await asyncio.sleep(settle)
    done.set()
    await sampler
    after = rss_mib(pid)
    peak = max([v for v in [before, after, *samples] if v is not None])
    return {"n": n, "before_mib": before, "peak_mib": peak, "after_mib": after, "seconds": seconds,
            "statuses": statuses}


RUNNER_SCRIPT = """
import json, sys
from image2prompt import Config, Interrogator, SearchSettings
from image2prompt.runner import Runner
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
ip = Interrogator.load(Config(clip_model=sys.argv[1], caption_model=None, device="cpu", vocab=(sys.argv[2],)))
ip.prepare()
before = rss("VmRSS:")
records = list(Runner(lambda: ip, SearchSettings(mode="fast"), caption="a photo").run(sys.argv[3]))
print(json.dumps({"before_mib": before, "peak_mib": rss("VmHWM:"), "after_mib": rss("VmRSS:"),
                  "ok": sum(r.ok for r in records), "n": len(records)}))
"""


def run_runner(name: str, spec: str, model: str, vocab: str, folder: Path, work: Path) -> dict[str, Any]:
    src_dir = Path(spec.partition(":")[0]).resolve()
    env = dict(os.environ, PYTHONPATH=str(src_dir), OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(work / "cache"),
               HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RUNNER_SCRIPT, model, vocab, str(folder)], env=env, cwd=work,
                         capture_output=True, text=True, check=True)
    w = json.loads(out.stdout.strip().splitlines()[-1])
    w["seconds"] = time.perf_counter() - start
    w["statuses"] = {"ok": w.pop("ok")}
    print(f"  {name} Runner over {w['n']}: RSS {w['before_mib']:.0f} -> peak {w['peak_mib']:.0f} -> "
          f"{w['after_mib']:.0f} MiB at the end", file=sys.stderr, flush=True)
    return {"name": name, "src": str(src_dir), "waves": [w]}


def run_variant(name: str, spec: str, args: argparse.Namespace, model: str, vocab: str, payload: bytes,
                work: Path) -> dict[str, Any]:
    src, _, flag = spec.partition(":")
    src_dir = Path(src).resolve()
    port = free_port()
    cmd = [sys.executable, "-c", NO_TRIM] if flag == "notrim" else [sys.executable, "-m", "image2prompt"]
    cmd += ["serve", "--host", "127.0.0.1", "--port", str(port), "--clip", model, "--caption-model", "none",
            "--vocab", vocab, "--device", "cpu", "--max-queue", str(args.max_queue)]
    env = dict(os.environ, PYTHONPATH=str(src_dir), OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(work / "cache"), HF_HUB_OFFLINE="1")
    log_path = work / f"server-{name}.log"
    print(f"{name}: {' '.join(cmd[:3])} ... (PYTHONPATH={src_dir})", file=sys.stderr, flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        try:
            base = f"http://127.0.0.1:{port}"
            if not wait_ready(base, proc, 600):
                raise SystemExit(f"{name}: the server did not get ready:\n{log_tail(log_path)}")
            small = png(96, "RGB")
            asyncio.run(wave(base, proc.pid, body(small), 2, 0.5))  # warm-up: the model path, once
            time.sleep(2.0)
            waves = []
            for n in [int(w) for w in args.waves.split(",") if w.strip()]:
                w = asyncio.run(wave(base, proc.pid, body(payload), n, args.settle))
                print(f"  {name} wave {n}: RSS {w['before_mib']:.0f} -> peak {w['peak_mib']:.0f} -> "
                      f"{w['after_mib']:.0f} MiB {args.settle:g} s later; {w['statuses']} in {w['seconds']:.1f} s",
                      file=sys.stderr, flush=True)
                waves.append(w)
        finally:
            stop(proc)
    return {"name": name, "src": str(src_dir), "trim": flag != "notrim", "waves": waves}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_env()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="i2p-serve-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    model, vocab = make_model(work, args.input_side), make_vocab(work)
    payload = png(args.size, args.image_mode)
    print(f"upload: {args.size}x{args.size} {args.image_mode} PNG, {len(payload)} bytes", file=sys.stderr)
    variants = args.variant or [f"this checkout={REPO_ROOT / 'src'}"]
    results = []
    folder = work / "runner-images"
    if args.runner_images:
        folder.mkdir(exist_ok=True)
        for k in range(args.runner_images):
            (folder / f"{k:03d}.png").write_bytes(payload)
    for v in variants:
        name, _, spec = v.partition("=")
        if args.runner_images:
            results.append(run_runner(name, spec or name, model, vocab, folder, work))
        else:
            results.append(run_variant(name, spec or name, args, model, vocab, payload, work))
    rows = []
    for r in results:
        for w in r["waves"]:
            rows.append([r["name"], w["n"], f"{w['before_mib']:,.0f}", f"{w['peak_mib']:,.0f}",
                         f"{w['after_mib']:,.0f}", f"{w['seconds']:.1f}",
                         ", ".join(f"{k}: {v}" for k, v in sorted(w["statuses"].items()))])
    notes = [(f"Upload: {args.size}×{args.size} {args.image_mode} PNG of {len(payload):,} bytes; tiny CLIP with "
              f"input side {args.input_side}, no captioner, fast mode, OMP_NUM_THREADS=1; 'after' is "
              f"{args.settle:g} s after the wave's last answer; waves in order in one server per variant.")]
    if args.runner_images:
        notes = [(f"Runner (batch_size 16, 2 decode workers, lazy interrogator) over {args.runner_images} "
                  f"files: {args.size}×{args.size} {args.image_mode} PNGs of {len(payload):,} bytes; tiny CLIP "
                  f"with input side {args.input_side}; 'before' is after the tables are embedded, 'peak' is "
                  "VmHWM, 'after' at the end.")]
    emit_report("cpu", notes, ["variant", "images" if args.runner_images else "uploads at once", "RSS before MiB",
                               "peak MiB", "after MiB", "s", "answers"], rows, args.markdown_out)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "upload_bytes": len(payload),
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
