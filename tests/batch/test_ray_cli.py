"""``image2prompt batch --ray`` as a user runs it: the real command in its own process,
starting (or joining) its own Ray.

* With the default actor flags on a 2-CPU local Ray (forced with ``RAY_OVERRIDE_RESOURCES``,
  so it is 2 CPUs on any machine), the encode and search actors at 1 CPU each took both
  CPUs and the decode tasks waited for ever (issue 28). The run must finish, say in one line
  that it shared the CPUs out, and write the records the single-process engine writes.
* A cluster started with token authentication refuses a driver that has the token but not
  ``RAY_AUTH_MODE=token``: one line naming the cause and the fix, no traceback.

The subprocesses have generous timeouts that only keep a regression (a hang) from hanging
the suite; nothing here is timed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from image2prompt.batch.records import read_records

# config, expected, folder: test_ray's module fixtures (the same inputs and the engine's records)
from tests.batch.test_ray import CAPTION, _by_source, _same, config, expected, folder  # noqa: F401

HANG_GUARD_S = 420  # far above a run's length on a loaded 2-core machine (about a minute)


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: offline, a home of its own (Ray writes
    ~/.ray/auth_token there), and no Ray settings inherited from this test process (a local
    ray.init() in it sets RAY_AUTH_MODE=token in os.environ)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS", "RAY_OVERRIDE_RESOURCES"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", PYTHONUNBUFFERED="1", **extra)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess[str]:
    """Run a command; past ``timeout`` interrupt it (so it shuts its Ray down), then fail."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s (hung?): {' '.join(args[2:5])} ...\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _batch(*args: str) -> list[str]:
    return [sys.executable, "-m", "image2prompt", "batch", *args]


def _model_args(cfg: Any) -> list[str]:
    return ["--clip", cfg.clip_model, "--caption-model", "none", "--caption", CAPTION,
            "--vocab", *cfg.vocab, "--device", "cpu", "--cache-dir", cfg.cache_dir, "--mode", "fast",
            "--batch-size", "4"]


def _ours(stderr: str) -> list[str]:
    """Our lines on stderr (Ray's own processes print theirs too)."""
    return [line for line in stderr.splitlines() if line.startswith("image2prompt:")]


def test_local_ray_on_two_cpus_finishes_with_the_default_actor_flags(folder, config, expected, tmp_path):
    output = tmp_path / "out.jsonl"
    home = tmp_path / "home"
    home.mkdir()
    # the default flags: one encode and one search actor, 1 CPU each
    done = _run(_batch(str(folder), "--output", str(output), "--ray", *_model_args(config)),
                _env(home, RAY_OVERRIDE_RESOURCES='{"CPU": 2}'))
    assert done.returncode == 1, done.stderr  # the two broken files failed
    assert "Traceback" not in done.stderr
    _same(_by_source(list(read_records(output))), expected)
    said = [line for line in _ours(done.stderr) if "--ray:" in line]
    assert said == [("image2prompt: warning: --ray: 1 encode and 1 search actor at 1 CPU each, plus 1 for the "
                     "decode tasks, need 3 CPUs, the Ray cluster has 2: running each actor at 0.5 CPU "
                     "(--cpus-per-actor 0.5)")]


_CLUSTER = """
import sys, ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
         object_store_memory=128 * 1024 * 1024, _temp_dir=sys.argv[1])
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A Ray cluster with token authentication (RAY_AUTH_MODE=token: Ray writes the token to
    HOME/.ray/auth_token), as ``ray start --head`` makes one where a token exists; its
    address and that HOME."""
    home = tmp_path_factory.mktemp("token-home")
    temp = tempfile.mkdtemp(prefix="i2p-rt-", dir="/tmp")  # short: Ray's socket paths have a length limit
    proc = subprocess.Popen([sys.executable, "-c", _CLUSTER, temp], env=_env(home, RAY_AUTH_MODE="token"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address, "the token-auth cluster did not start"
        assert (home / ".ray" / "auth_token").is_file()
        yield address, home
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_token_auth_cluster_without_ray_auth_mode_is_one_line(token_cluster, folder, config, tmp_path):
    address, home = token_cluster
    output = tmp_path / "out.jsonl"
    done = _run(_batch(str(folder), "--output", str(output), f"--ray={address}", *_model_args(config)),
                _env(home), timeout=180)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert _ours(done.stderr) == [(
        f"image2prompt: error: cannot join the Ray cluster at {address}: it uses token authentication, and Ray "
        f"sends this machine's token ({home / '.ray' / 'auth_token'}) to an explicit address only when "
        "RAY_AUTH_MODE=token is set: run with RAY_AUTH_MODE=token (the token must be the cluster's)")]
    assert not output.exists() or list(read_records(output)) == []


def test_a_token_auth_cluster_without_a_token_is_one_line(token_cluster, folder, config, tmp_path):
    """No token on this machine at all: Ray retries for 20 s (its warnings), then our one line."""
    address, _ = token_cluster
    home = tmp_path / "home"
    home.mkdir()
    done = _run(_batch(str(folder), "--output", str(tmp_path / "out.jsonl"), f"--ray={address}",
                       *_model_args(config)), _env(home), timeout=180)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert _ours(done.stderr) == [(
        f"image2prompt: error: cannot join the Ray cluster at {address}: it uses token authentication, and this "
        "process sent no token: run with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token "
        "(or RAY_AUTH_TOKEN)")]


def test_the_probe_sees_the_refusal_at_once(token_cluster, tmp_path):
    """The one-line error above comes from asking the cluster once, before ray.init's 20 s of
    retries (its own process: Ray caches the authentication mode per process)."""
    address, home = token_cluster
    probe = ("import sys; from image2prompt.batch.ray.cluster import _refused_for_token as r; "
             "print(r(sys.argv[1]), r('ray://' + sys.argv[1]))")
    done = _run([sys.executable, "-c", probe, address], _env(home), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]  # a GCS address is asked; Ray Client's is not
