"""Load test of ``image2prompt serve``: many concurrent clients on loopback, micro-batching on vs off.

For each configuration (``--configs``, a list of ``--max-batch`` values: 16 is micro-batching
on, 1 is off) a real server is started in its own process
(``python -m image2prompt serve --clip local-dir:... --caption-model local-dir:... --vocab DIR
--max-batch N --max-queue Q``), one after the other, with a table cache in the work folder
(tables are embedded by the first server, before the clock). Once /readyz says it is ready,
``--clients`` concurrent clients (asyncio + httpx, one connection each) run the same load as a
warm-up (not counted: at least ``--warmup`` seconds and four full micro-batches, so memory is
read at its steady size), then for ``--duration`` seconds. Each
client loops: POST /v1/interrogate with a multipart PNG (16 varied generated images) and a
mode, wait for the answer, record its latency and status. A 503 (the queue is full: a
deliberate refusal) is counted, and the client waits ``min(Retry-After, 0.2 s)`` before its
next request; any other non-200 answer, or an exception, is an error.

It reports per configuration: requests answered 200, throughput (200s per second), p50/p95/p99
latency of those, 503s, other errors, the server's RSS after the warm-up, at the end and its
peak (sampled every second), CPU seconds the server and the load generator used, and the
mean micro-batch size over the timed run (from GET /v1/stats); then the gain, throughput with
micro-batching over throughput without. The table is Markdown, ready for docs/benchmarks.md,
under the machine, date and command line. Exit status 1 when any configuration had an error
other than a 503 (a regression); the targets (no such errors, flat memory, gain >= 2x) are
checked and printed.

    python bench/serve_load.py                              # 50 clients, 60 s, --configs 16,1
    python bench/serve_load.py --clients 10 --duration 10   # a smoke run
    python bench/serve_load.py --mode best --json out.json
    python bench/serve_load.py --mode fast,classic,best     # clients cycle through the modes
    python bench/serve_load.py --max-queue 16               # fewer slots than clients: 503s
    python bench/serve_load.py --server-threads 1 --repeat 2  # one torch thread; alternate on/off twice
    python bench/serve_load.py --clip local-dir:/models/b32 --caption-model none --mode negative \\
        --server-args="--max-wait-ms 10"

The models are random-weight tiny ones (tests/support/tiny_models.py) unless ``--clip`` /
``--caption-model`` / ``--vocab`` name others: this measures the service (queueing, batching,
HTTP, memory), not prompt quality. The load generator shares the machine with the server;
its CPU time is reported so that can be judged, and so is the CPU that other processes took
meanwhile (on a shared machine that noise can swamp the result: ``--repeat`` alternates the
configurations and compares medians). With torch's default of one thread per core the model
worker's threads compete with the HTTP side and with any other process, and a 2-core machine
then stalls for seconds at a time; ``--server-threads 1`` measures the service without that.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, emit_report, machine_info, offline_env

ENDPOINT = "/v1/interrogate"
BOUNDARY = "image2promptloadtestboundary7f3a"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (one connection each)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of timed load per configuration")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds of the same load before the clock starts (not counted; memory is read after it)")
    p.add_argument("--mode", default="fast",
                   help="search mode of every request, or a comma-separated mix the clients cycle through")
    p.add_argument("--configs", default="16,1",
                   help="--max-batch of each server run, in order (1: micro-batching off)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="shorthand: --configs N,1 (this micro-batch size against batching off)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the configurations this many times, alternating (the gain uses each one's median)")
    p.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue (past it: 503)")
    p.add_argument("--port-base", type=int, default=0,
                   help="configuration i listens on port-base + i (0: free ports the kernel picks)")
    p.add_argument("--clip", default=None, help="CLIP model for the server (default: a tiny random one)")
    p.add_argument("--caption-model", default=None,
                   help="captioner for the server, or none (default: a tiny random BLIP)")
    p.add_argument("--vocab", default=None, help="vocabulary folder (default: the tests' SMALL_VOCAB)")
    p.add_argument("--images", type=int, default=16, help="distinct generated PNG images the clients send")
    p.add_argument("--image-size", type=int, default=128, help="pixels per side of those images")
    p.add_argument("--server-threads", type=int, default=None, metavar="N",
                   help="OMP_NUM_THREADS for the server (torch's CPU threads; default: inherited, else torch's "
                        "own default, all cores)")
    p.add_argument("--server-args", default="",
                   help='extra arguments for serve; write it with = as they start with a dash: '
                        '--server-args="--max-wait-ms 10 -q"')
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for /readyz")
    p.add_argument("--request-timeout", type=float, default=300.0, help="client-side timeout per request")
    p.add_argument("--work-dir", default=None, help="models, cache and server logs (default: a temp folder)")
    p.add_argument("--json", default=None, metavar="FILE", help="save the raw numbers (and latencies) here")
    p.add_argument("--markdown-out", default=None, metavar="FILE", help="also write the report here")
    args = p.parse_args(argv)
    if args.max_batch is not None:
        args.configs = f"{args.max_batch},1"
    args.config_list = [int(c) for c in args.configs.split(",") if c.strip()]
    args.modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    if not args.config_list or any(c < 1 for c in args.config_list):
        p.error("--configs: positive integers, e.g. 16,1")
    if not args.modes:
        p.error("--mode is empty")
    if args.clients < 1 or args.duration <= 0 or args.repeat < 1:
        p.error("--clients, --duration and --repeat must be positive")
    return args


# -- inputs ------------------------------------------------------------------------------------


def prepare_models(args: argparse.Namespace, work: Path) -> dict[str, str]:
    """The server's --clip, --caption-model and --vocab: the given ones, else tiny random models."""
    from tests.support import tiny_models

    models = work / "models"
    clip = args.clip
    if clip is None:
        d = models / "tiny-open-clip"
        if not (d / "open_clip_model.safetensors").exists():
            tiny_models.make_open_clip_dir(d)
        clip = f"local-dir:{d}"
    captioner = args.caption_model
    if captioner is None:
        d = models / "tiny-blip"
        if not (d / "config.json").exists():
            tiny_models.make_blip_dir(d)
        captioner = f"local-dir:{d}"
    vocab = args.vocab
    if vocab is None:
        from tests.conftest import SMALL_VOCAB

        d = work / "vocab"
        d.mkdir(parents=True, exist_ok=True)
        for name, lines in SMALL_VOCAB.items():
            (d / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        vocab = str(d)
    return {"clip": clip, "caption_model": captioner, "vocab": vocab}


def make_bodies(n: int, size: int, modes: list[str]) -> list[tuple[bytes, str]]:
    """Pre-built multipart bodies (image, mode), so the load generator spends little CPU per request."""
    from tests.conftest import make_images

    bodies = []
    pngs = []
    for i, img in enumerate(make_images(n, size=size)):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        pngs.append((f"img{i:02d}.png", buf.getvalue()))
    for mode in modes:
        for name, png in pngs:
            body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"mode\"\r\n\r\n{mode}\r\n"
                    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                    f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
            bodies.append((body, mode))
    return bodies


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(port: int, models: dict[str, str], max_batch: int, max_queue: int, extra: str) -> list[str]:
    return [sys.executable, "-m", "image2prompt", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--clip", models["clip"], "--caption-model", models["caption_model"], "--vocab", models["vocab"],
            "--device", "cpu", "--max-batch", str(max_batch), "--max-queue", str(max_queue), *shlex.split(extra)]


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:  # noqa: BLE001  gone, or psutil missing
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine used (all cores; from /proc/stat), to show how much
    of the machine others took during a run (this machine is shared and noisy)."""
    try:
        parts = open("/proc/stat").readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def log_tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# -- the load ------------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, 200 answers only
    ok: int = 0
    busy: int = 0  # 503
    errors: int = 0  # any other status, or an exception
    error_kinds: dict[str, int] = field(default_factory=dict)
    by_mode: dict[str, list[float]] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def run_load(base: str, bodies: list[tuple[bytes, str]], clients: int, seconds: float,
                   request_timeout: float, tally: Tally | None) -> float:
    """``clients`` loops of POSTs until ``seconds`` pass (requests in flight then are finished and
    counted); returns the elapsed time until the last one came back. ``tally`` None: a warm-up."""
    import httpx

    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(request_timeout, connect=30.0)
    t = tally if tally is not None else Tally()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout, trust_env=False) as http:
        start = time.perf_counter()
        end = start + seconds

        async def client(k: int) -> None:
            i = k * 7  # each client starts at its own image and mode
            while time.perf_counter() < end:
                body, mode = bodies[i % len(bodies)]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = await http.post(ENDPOINT, content=body, headers=headers)
                except Exception as err:  # noqa: BLE001  counted, never fatal
                    t.error(type(err).__name__)
                    await asyncio.sleep(0.05)
                    continue
                dt = time.perf_counter() - t0
                if r.status_code == 200:
                    t.ok += 1
                    t.latencies.append(dt)
                    t.by_mode.setdefault(mode, []).append(dt)
                elif r.status_code == 503:
                    t.busy += 1
                    try:
                        retry = float(r.headers.get("retry-after", "1"))
                    except ValueError:
                        retry = 1.0
                    await asyncio.sleep(min(retry, 0.2))
                else:
                    t.error(f"HTTP {r.status_code}: {r.text[:120]}")

        await asyncio.gather(*(client(k) for k in range(clients)))
        return time.perf_counter() - start


async def sample_rss(pid: int, out: list[float], stop_event: asyncio.Event) -> None:
    while not stop_event.is_set():
        v = rss_mib(pid)
        if v is not None:
            out.append(v)
        try:
            await asyncio.wait_for(stop_event.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def get_json(base: str, path: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=30) as http:
        r = await http.get(path)
        r.raise_for_status()
        return dict(r.json())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def server_log_stats(path: Path, since_line: int) -> dict[str, Any]:
    """From the server's log after ``since_line``: the server-side latency of the 200 answers of
    ENDPOINT (its one line per request), and the micro-batch timings when it ran with --debug."""
    lines = path.read_text(errors="replace").splitlines()[since_line:]
    req = re.compile(rf"POST {re.escape(ENDPOINT)} 200 ([0-9.]+)ms")
    mb = re.compile(r"micro-batch of (\d+) in ([0-9.]+) ms")
    server_ms = [float(m.group(1)) for m in map(req.search, lines) if m]
    batches = [(int(m.group(1)), float(m.group(2))) for m in map(mb.search, lines) if m]
    out: dict[str, Any] = {"server_p50_ms": percentile(server_ms, 50) if server_ms else None,
                           "server_p99_ms": percentile(server_ms, 99) if server_ms else None,
                           "server_lines": len(server_ms)}
    if batches:
        out["model_ms_total"] = sum(ms for _, ms in batches)
        out["model_ms_per_request"] = out["model_ms_total"] / max(1, sum(n for n, _ in batches))
        out["model_batches_logged"] = len(batches)
    return out


def run_config(args: argparse.Namespace, models: dict[str, str], bodies: list[tuple[bytes, str]], work: Path,
               index: int, max_batch: int, run: int = 1) -> dict[str, Any]:
    port = args.port_base + index if args.port_base else free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = server_command(port, models, max_batch, args.max_queue, args.server_args)
    log_path = work / f"server-max-batch-{max_batch}{f'-run{run}' if args.repeat > 1 else ''}.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               IMAGE2PROMPT_CACHE_DIR=str(work / "cache"))  # tables: built by the first server only
    if args.server_threads is not None:
        env["OMP_NUM_THREADS"] = str(args.server_threads)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    print(f"[max-batch {max_batch}] starting: {shlex.join(cmd)}", flush=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT))
    result: dict[str, Any] = {"max_batch": max_batch, "run": run, "port": port, "log": str(log_path),
                              "command": shlex.join(cmd)}
    try:
        t0 = time.perf_counter()
        if not wait_ready(base, proc, args.ready_timeout):
            raise RuntimeError(f"the server did not become ready (exit {proc.poll()}):\n{log_tail(log_path)}")
        result["ready_s"] = time.perf_counter() - t0
        result["rss_ready_mib"] = rss_mib(proc.pid)
        print(f"[max-batch {max_batch}] ready in {result['ready_s']:.1f} s, RSS {result['rss_ready_mib']:.0f} MiB;"
              f" warm-up {args.warmup:g} s", flush=True)
        result.update(asyncio.run(measure(args, base, proc, bodies, log_path)))
    finally:
        stop(proc)
        log.close()
    result["exit_code"] = proc.returncode
    return result


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, trust_env=False, timeout=5) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if http.get("/readyz").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    return False


async def measure(args: argparse.Namespace, base: str, proc: subprocess.Popen, bodies: list[tuple[bytes, str]],
                  log_path: Path) -> dict[str, Any]:
    warm = Tally()
    warm_s = 0.0
    busy_w, srv_w, self_w = machine_busy_seconds(), cpu_seconds(proc.pid), self_cpu_seconds()
    if args.warmup > 0:
        # At least --warmup seconds, and until the worker has run a few full micro-batches (the
        # allocator grows to its steady size over the first ones; a best-mode batch takes seconds),
        # so "RSS warm" is the steady state, not the start of it; at most 10 rounds.
        for _ in range(10):
            warm_s += await run_load(base, bodies, args.clients, args.warmup, args.request_timeout, warm)
            full = min(args.clients, (await get_json(base, "/v1/stats"))["max_batch"])
            if warm.ok >= 4 * full or (warm.errors and not warm.ok):  # warm, or it never will be
                break
    stats0 = await get_json(base, "/v1/stats")
    others_w = None
    if None not in (busy_w, srv_w) and warm_s:
        others_w = ((machine_busy_seconds() or 0) - busy_w - ((cpu_seconds(proc.pid) or 0) - srv_w)
                    - (self_cpu_seconds() - self_w)) / warm_s / (os.cpu_count() or 1)
    rss0 = rss_mib(proc.pid)
    cpu0, self0, all0 = cpu_seconds(proc.pid), self_cpu_seconds(), machine_busy_seconds()
    log_lines0 = len(log_path.read_text(errors="replace").splitlines())
    samples: list[float] = []
    done = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(proc.pid, samples, done))
    tally = Tally()
    print(f"  timed run: {args.clients} clients, {args.duration:g} s", flush=True)
    elapsed = await run_load(base, bodies, args.clients, args.duration, args.request_timeout, tally)
    done.set()
    await sampler
    cpu1, self1, all1 = cpu_seconds(proc.pid), self_cpu_seconds(), machine_busy_seconds()
    rss1 = rss_mib(proc.pid)
    stats1 = await get_json(base, "/v1/stats")
    ran = lambda s: s["completed"] + s["failed"]
    batches = stats1["batches"] - stats0["batches"]
    out: dict[str, Any] = {
        "elapsed_s": elapsed, "ok": tally.ok, "busy_503": tally.busy, "errors": tally.errors,
        "error_kinds": tally.error_kinds, "throughput": tally.ok / elapsed if elapsed else 0.0,
        "warmup": {"seconds": warm_s, "others_cpu_share": others_w, "ok": warm.ok, "busy_503": warm.busy,
                   "errors": warm.errors, "error_kinds": warm.error_kinds},
        "rss_start_mib": rss0, "rss_end_mib": rss1,
        "rss_peak_mib": max(samples + [v for v in (rss0, rss1) if v is not None]) if samples else rss1,
        "rss_samples_mib": samples,
        "mean_batch": (ran(stats1) - ran(stats0)) / batches if batches else 0.0,
        "largest_batch": stats1["largest_batch"], "batches": batches,
        "stats_before": stats0, "stats_after": stats1,
        "server_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        "client_cpu_s": self1 - self0,
        "others_cpu_s": (all1 - all0) - (cpu1 - cpu0) - (self1 - self0)
        if None not in (all0, all1, cpu0, cpu1) else None,
        "loadavg_after": os.getloadavg()[0],
        "latencies_s": tally.latencies,
    }
    if tally.latencies:
        for q in (50, 95, 99):
            out[f"p{q}_ms"] = 1000 * percentile(tally.latencies, q)
        out["by_mode_p50_ms"] = {m: 1000 * percentile(v, 50) for m, v in tally.by_mode.items()}
        out["by_mode_ok"] = {m: len(v) for m, v in tally.by_mode.items()}
    out.update(server_log_stats(log_path, log_lines0))
    print(f"  {tally.ok} ok ({out['throughput']:.1f}/s), {tally.busy} 503, {tally.errors} errors, "
          f"mean batch {out['mean_batch']:.2f}, p50 {out.get('p50_ms', float('nan')):.0f} ms", flush=True)
    return out


# -- the report ---------------------------------------------------------------------------------


def _f(v: Any, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


def report(args: argparse.Namespace, results: list[dict[str, Any]], models: dict[str, str]) -> tuple[str, dict]:
    def label(r: dict[str, Any]) -> str:
        return (f"{r['max_batch']}" + (" (off)" if r["max_batch"] == 1 else "")
                + (f" run {r['run']}" if args.repeat > 1 else ""))

    headers = ["max batch", "clients", "seconds", "ok", "ok req/s", "p50 ms", "p95 ms", "p99 ms", "503s",
               "other errors", "mean batch", "RSS warm MiB", "RSS end MiB", "RSS peak MiB",
               "server CPU ms/req", "loadgen CPU ms/req", "others' CPU %"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([label(r), args.clients, *["-"] * 7, "failed", *["-"] * 7])
            continue
        per = lambda s, r=r: 1000 * s / r["ok"] if s is not None and r["ok"] else None
        rows.append([label(r), args.clients,
                     f"{r['elapsed_s']:.1f}", r["ok"], f"{r['throughput']:.1f}", _f(r.get("p50_ms")),
                     _f(r.get("p95_ms")), _f(r.get("p99_ms")), r["busy_503"], r["errors"],
                     f"{r['mean_batch']:.2f}", _f(r["rss_start_mib"]), _f(r["rss_end_mib"]),
                     _f(r["rss_peak_mib"]), _f(per(r["server_cpu_s"]), ".1f"), _f(per(r["client_cpu_s"]), ".1f"),
                     _f(max(0.0, 100 * r["others_cpu_s"] / r["elapsed_s"] / (os.cpu_count() or 1))
                        if r.get("others_cpu_s") is not None else None)])
    ok_runs = [r for r in results if "error" not in r]
    by_batch: dict[int, float] = {mb: statistics.median(r["throughput"] for r in ok_runs if r["max_batch"] == mb)
                                  for mb in dict.fromkeys(r["max_batch"] for r in ok_runs)}
    checks: dict[str, Any] = {}
    gains = []
    if by_batch.get(1):
        for mb, tput in by_batch.items():
            if mb > 1:
                g = tput / by_batch[1]
                gains.append(g)
                rows.append([f"gain {mb} vs off", "", "", "", f"{g:.2f}x", *[""] * 12])
    checks["no errors other than 503"] = all(r.get("errors", 1) == 0 and "error" not in r for r in results)
    # flat: at most max(32 MiB, 5%) growth from the end of the warm-up to the end of the run
    measured = [r for r in results if "error" not in r and r["rss_start_mib"] and r["rss_end_mib"]]
    checks["flat memory"] = bool(measured) and all(
        r["rss_end_mib"] - r["rss_start_mib"] <= max(32.0, 0.05 * r["rss_start_mib"]) for r in measured)
    if gains:
        checks["micro-batching >= 2x"] = all(g >= 2 for g in gains)
    notes = [
        f"load: {args.clients} concurrent clients on loopback, each POST {ENDPOINT} (multipart PNG, "
        f"{args.images} generated {args.image_size}px images) with mode {'/'.join(args.modes)}, "
        f"a warm-up (>= {args.warmup:g} s and >= 4 full micro-batches) then {args.duration:g} s timed; "
        "a 503 waits min(Retry-After, 0.2 s)",
        f"server: image2prompt serve --max-queue {args.max_queue}{' ' + args.server_args if args.server_args else ''}"
        f", one process per configuration, torch threads {server_threads(args)}"
        f"; models: clip {_short(models['clip'])}, captioner "
        f"{_short(models['caption_model'])}, vocab {_short(models['vocab'])}"
        + (" (random-weight tiny models: service speed, not prompt quality)" if args.clip is None else ""),
        "latency: client-side, of 200 answers; RSS: the server's, after the warm-up, at the end, peak of 1 s samples; "
        "mean batch: requests per encode pass during the timed run (/v1/stats); CPU: user+sys per 200 answer; "
        "others' CPU: the share of all cores that other processes on this (shared) machine used meanwhile",
        "gain: ok req/s with micro-batching over ok req/s without"
        + (f" (each configuration's median of {args.repeat} alternating runs)" if args.repeat > 1 else ""),
        "targets: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()),
    ]
    srv = [f"max batch {label(r)}: warm-up {r['warmup']['seconds']:.0f} s (others' CPU "
           f"{_f(max(0.0, 100 * (r['warmup']['others_cpu_share'] or 0)))}%); server-side p50 "
           f"{_f(r.get('server_p50_ms'))} ms / p99 {_f(r.get('server_p99_ms'))} ms (its log)"
           + (f", model {r['model_ms_per_request']:.1f} ms/request in {r['model_batches_logged']} logged batches, "
              f"busy {100 * r['model_ms_total'] / 1000 / r['elapsed_s']:.0f}% of the run"
              if r.get("model_ms_total") else "")
           + (f", p50 by mode {', '.join(f'{m} {v:.0f} ms' for m, v in r['by_mode_p50_ms'].items())}"
              if len(r.get("by_mode_p50_ms", {})) > 1 else "")
           for r in results if "error" not in r]
    errs = [f"max batch {label(r)} errors: " + "; ".join(f"{n}x {k}" for k, n in sorted(
        r["error_kinds"].items(), key=lambda kv: -kv[1])[:3]) for r in results if r.get("error_kinds")]
    errs += [f"max batch {label(r)} FAILED: {r['error'].splitlines()[0]}" for r in results if "error" in r]
    text = emit_report("cpu", notes + srv + errs, headers, rows, args.markdown_out)
    return text, checks


def server_threads(args: argparse.Namespace) -> str:
    """The server's torch CPU threads (the machine line's "torch threads" is the load generator's)."""
    if args.server_threads is not None:
        return f"{args.server_threads} (--server-threads)"
    if os.environ.get("OMP_NUM_THREADS"):
        return f"{os.environ['OMP_NUM_THREADS']} (OMP_NUM_THREADS)"
    return f"torch's default ({os.cpu_count()}, one per core)"


def _short(name: str) -> str:
    tmp = tempfile.gettempdir()
    return name.replace(tmp + os.sep, "$TMP/") if isinstance(name, str) else str(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_env()
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="i2p-serve-load-")
        work = Path(tmp.name)
    try:
        models = prepare_models(args, work)
        bodies = make_bodies(args.images, args.image_size, args.modes)
        results = []
        plan = [(run, mb) for run in range(1, args.repeat + 1) for mb in args.config_list]
        for i, (run, mb) in enumerate(plan):
            try:
                results.append(run_config(args, models, bodies, work, i, mb, run))
            except Exception as err:  # noqa: BLE001  reported, and the exit status says so
                print(f"[max-batch {mb}] FAILED: {err}", flush=True)
                results.append({"max_batch": mb, "run": run, "error": str(err)})
        _text, checks = report(args, results, models)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "command": sys.argv, "machine": machine_info("cpu"), "args": {k: v for k, v in vars(args).items()},
                "models": models, "checks": checks, "results": results}, indent=1))
        if args.work_dir:
            print(f"server logs: {work}")
        failed = any("error" in r or r.get("errors", 0) for r in results)
        return 1 if failed else 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
