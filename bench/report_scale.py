"""The style-study report at scale: `image2prompt report` on 100k synthetic batch records.

Writes N synthetic records (default 100,000) with the shape of ``batch --store-scores 10``
output (tests/support/synthetic_records.py: 4 folders, 2,000 phrases per category, the top
10 per category per image, one planted phrase whose rate differs by folder) to a temporary
JSONL file, then runs the real CLI in a fresh process,

    python -m image2prompt report FILE --html OUT.html --json OUT.json --group-by folder -v

and measures its wall-clock time and its peak resident memory. It does the same at N/10, to
show how time and memory grow with the collection (memory should stay nearly flat: the
streaming pass keeps per-phrase counts and fixed-size samples, plus 4 bytes per prompt
phrase and 8 per image). Generating the records is timed separately and is not part of the figure. ``-v``
only adds two log lines, which split the run into the streaming pass and the rest.

Peak memory is the child's own ``ru_maxrss`` from ``os.wait4`` (that child only; not
``RUSAGE_CHILDREN``, which is the maximum over every child waited for so far), cross-checked
with the child's ``VmHWM`` read from /proc while it runs. Linux carries the parent's
high-water mark across fork+exec into ``ru_maxrss``; this script's own RSS at each launch is
printed, and it stays far below the child's.

    python bench/report_scale.py                       # 10k and 100k records
    python bench/report_scale.py --records 20000 --keep /tmp/report-scale
    python bench/report_scale.py --profile /tmp/report.prof   # also one cProfile run at N

No model is loaded and no image exists (the galleries show "not found"; no map without
--features): this times the records' pass, the statistics, the figures and the page.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.synthetic_records import records, write_jsonl  # noqa: E402

GROUPS = {"portraits": 0.4, "landscapes": 0.3, "scans": 0.2, "renders": 0.1}
PLANTED = {"flavor phrase planted": {"portraits": 0.30, "landscapes": 0.10, "scans": 0.10, "renders": 0.10}}
BYTES_PER_RECORD = 9_000  # what the generator writes, about (for the disk check)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=100_000, help="the large run (the small one is a tenth)")
    p.add_argument("--per-category", type=int, default=2000, help="phrases per category in the vocabulary")
    p.add_argument("--k", type=int, default=10, help="top phrases stored per category (batch --store-scores K)")
    p.add_argument("--repeat", type=int, default=1, help="report runs per size (the table shows the fastest)")
    p.add_argument("--tmp", default=None, help="where the temporary folder goes (default: the system's)")
    p.add_argument("--keep", default=None, metavar="DIR", help="write the records and outputs here and keep them")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="afterwards, run the largest report once more under cProfile and write its stats here")
    p.add_argument("--markdown-out", default=None, help="also write the table and notes to this file")
    return p.parse_args(argv)


# -- machine -------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return int(m.group(1)) / 2**20 if m else None
    except OSError:
        return None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def _rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float | None:
    try:
        m = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# -- one report run --------------------------------------------------------------------------------
def run_report(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd`` in a fresh process: wall time, its own peak RSS (wait4) and VmHWM (polled), stderr."""
    parent_rss = _rss_mib()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    hwm = [0.0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            v = _rss_mib(proc.pid, "VmHWM")
            if v is not None:
                hwm[0] = max(hwm[0], v)
            done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stderr = proc.stderr.read()  # the child writes a few lines; read until it closes them
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    read = re.search(r"read (\d+) records \((\d+) images\) in ([\d.]+) s", stderr)
    built = re.search(r"report built in ([\d.]+) s", stderr)
    return {"rc": proc.returncode, "wall": wall, "maxrss_mib": usage.ru_maxrss / 1024, "hwm_mib": hwm[0],
            "parent_rss_mib": parent_rss, "stderr": stderr,
            "read_s": float(read.group(3)) if read else None, "built_s": float(built.group(1)) if built else None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted({max(1, args.records // 10), args.records})
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="report-scale-", dir=args.tmp))
    need = BYTES_PER_RECORD * sum(sizes) * 1.2
    free = shutil.disk_usage(work).free
    if free < need:
        print(f"not enough room in {work}: {_size(free)} free, about {_size(need)} needed (use --tmp DIR)",
              file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 2
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), env.get("PYTHONPATH")) if p)
    started = datetime.datetime.now(datetime.timezone.utc)
    rows, results, last_cmd = [], [], []
    try:
        for n in sizes:
            path = work / f"records-{n}.jsonl"
            t0 = time.perf_counter()
            write_jsonl(path, records(n, GROUPS, per_category=args.per_category, k=args.k, planted=PLANTED))
            gen = time.perf_counter() - t0
            jsonl = path.stat().st_size
            print(f"{n} records: {_size(jsonl)} JSONL, generated in {gen:.1f} s (not timed below)", flush=True)
            html, js = work / f"report-{n}.html", work / f"summary-{n}.json"
            cmd = [sys.executable, "-m", "image2prompt", "report", str(path), "--html", str(html), "--json", str(js),
                   "--group-by", "folder", "-v"]
            last_cmd = cmd
            best = None
            for r in range(args.repeat):
                res = run_report(cmd, env)
                if res["rc"] != 0:
                    print(f"  report failed (exit {res['rc']}):\n{res['stderr']}", file=sys.stderr)
                    return 1
                print(f"  run {r + 1}: {res['wall']:.1f} s wall (streaming pass {res['read_s']} s, "
                      f"report built {res['built_s']} s after the start of build_report), peak RSS "
                      f"{res['maxrss_mib']:.0f} MiB (VmHWM polled {res['hwm_mib']:.0f} MiB; this script's RSS "
                      f"at launch {res['parent_rss_mib']:.0f} MiB), 1-min load {os.getloadavg()[0]:.1f}", flush=True)
                best = res if best is None or res["wall"] < best["wall"] else best
            summary = json.loads(js.read_text())
            flagged = [f"{s['text']} ({s['group']}, {100 * s['effect']:+.1f} pts)"
                       for s in summary["separating"]["significant"]]
            rest = best["built_s"] - best["read_s"] if best["read_s"] is not None and best["built_s"] else None
            startup = best["wall"] - best["built_s"] if best["built_s"] else None
            results.append({"n": n, "gen": gen, "jsonl": jsonl, "best": best, "html": html.stat().st_size,
                            "json": js.stat().st_size, "flagged": flagged})
            rows.append([f"{n:,}", _size(jsonl), f"{best['wall']:.1f}",
                         f"{best['read_s']:.1f}" if best["read_s"] is not None else "?",
                         f"{rest:.1f}" if rest is not None else "?", f"{startup:.1f}" if startup is not None else "?",
                         f"{best['maxrss_mib']:.0f}", _size(results[-1]["html"]),
                         f"{1e6 * best['wall'] / n:.0f}"])
        if args.profile:
            n = sizes[-1]
            path = work / f"records-{n}.jsonl"
            pcmd = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "image2prompt", "report", str(path),
                    "--html", str(work / "profiled.html"), "--json", str(work / "profiled.json"),
                    "--group-by", "folder", "-q"]
            res = run_report(pcmd, env)
            print(f"profile of the {n:,}-record run ({res['wall']:.1f} s under cProfile) written to {args.profile}",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    shown_cmd = " ".join(shlex.quote(c) for c in ["python", *last_cmd[1:]])
    shown_cmd = shown_cmd.replace(str(work), "$TMP")
    given = argv if argv is not None else sys.argv[1:]
    notes = [
        f"date: {started:%Y-%m-%d %H:%M} UTC; commit {_git_commit()}",
        f"machine: {_cpu_model()}, {os.cpu_count()} cores, "
        f"{_ram_gib():.0f} GiB RAM; Python {platform.python_version()} ({platform.system()} {platform.release()})",
        f"command: python bench/report_scale.py {' '.join(map(shlex.quote, given))}".rstrip(),
        f"each report run: {shown_cmd}",
        f"records: tests/support/synthetic_records.py, {len(GROUPS)} folders {dict(GROUPS)}, {args.per_category:,} "
        f"phrases per category x 5 categories, top {args.k} per category per image, 10 prompt phrases "
        f"(2 per category), one planted phrase ({next(iter(PLANTED))}: in 30% of the top-{args.k} lists in "
        "portraits, 10% elsewhere)",
        "generation (not in the figure): " + ", ".join(f"{r['n']:,} in {r['gen']:.1f} s" for r in results),
        "separating phrases found: " + "; ".join(f"{r['n']:,}: {', '.join(r['flagged']) or 'none'}" for r in results),
        f"report runs per size: {args.repeat} (fastest shown); peak RSS is the report process's own ru_maxrss (wait4)",
    ]
    header = ["records", "JSONL size", "wall s", "streaming pass s", "stats+figures+page s", "start-up+imports s",
              "peak RSS MiB", "HTML size", "µs/record"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print("\n" + text)
    if args.markdown_out:
        Path(args.markdown_out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
