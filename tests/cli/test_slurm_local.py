"""A real one-node SLURM cluster on localhost (issue 16.7): munged, slurmctld and slurmd started
as the current user from a private config, then ``sbatch --wait`` over

* examples/slurm_array.sbatch: one synthetic slide split over a 4-task array (``--shard slurm``),
* the README's one-slide-per-task recipe over 3 slides,
* a job killed with ``scancel`` part-way and resubmitted (the store keeps its finished tiles),

each compared with a single-process run. Skipped when slurm-wlm/munge are not installed
(``apt-get install slurm-wlm munge``); every daemon and job is stopped afterwards."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tilesegcli.store import TileStore
from tilesegcli.testing import synthetic

ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel",
           "scontrol")
START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(d: Path, host: str) -> str:
    ctld, slurmd = _free_port(), _free_port()
    user = getpass.getuser()
    return f"""ClusterName=tilesegtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctld}
SlurmdPort={slurmd}
AuthType=auth/munge
AuthInfo=socket={d}/munge/socket
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={min(2, os.cpu_count() or 1)} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """The running cluster: ``env`` for clients (SLURM_CONF, PATH with this Python's bin)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def sbatch_wait(self, *args: str, cwd: Path,
                    timeout: int = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sbatch", "--wait", "--cpus-per-task=1", "--mem=200M",
                               f"--chdir={cwd}", *args], env=self.env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def logs(self) -> str:
        parts = []
        for name in ("munge/log", "slurmctld.log", "slurmd.log"):
            p = self.root / name
            if p.is_file():
                parts.append(f"--- {name}\n" + "\n".join(p.read_text().splitlines()[-15:]))
        return "\n".join(parts)


def _wait_for(what: str, ok, procs: list[subprocess.Popen], cluster: LocalSlurm) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ok():
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            pytest.fail(f"local SLURM: {what} did not come up ({dead or 'timeout'})\n"
                        f"{cluster.logs()}")
        time.sleep(0.3)


def _stop(procs: list[subprocess.Popen], env: dict[str, str]) -> None:
    # jobs first (slurmstepd outlives slurmd), then the daemons, newest first, by their pid
    subprocess.run(["scancel", "--user", getpass.getuser()], env=env, capture_output=True,
                   timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, timeout=30)
        if q.returncode != 0 or not q.stdout.strip():
            break
        time.sleep(0.5)
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture(scope="module")
def slurm() -> Iterator[LocalSlurm]:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing; "
                    "apt-get install slurm-wlm munge)")
    root = Path(tempfile.mkdtemp(prefix="tslurm", dir="/tmp"))  # short: socket paths <= 108
    host = socket.gethostname().split(".")[0]
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (root / "slurm.conf").write_text(_config(root, host))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_CONF=str(root / "slurm.conf"), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    cluster = LocalSlurm(root, env)
    procs: list[subprocess.Popen] = []

    def start(*cmd: str) -> None:
        procs.append(subprocess.Popen(list(cmd), env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))

    try:
        m = root / "munge"
        start("munged", "--foreground", "--force", f"--key-file={key}", f"--socket={m}/socket",
              f"--pid-file={m}/pid", f"--log-file={m}/log", f"--seed-file={m}/seed")
        _wait_for("munged", (m / "socket").exists, procs, cluster)
        start("slurmctld", "-D", "-i", "-f", str(root / "slurm.conf"))
        start("slurmd", "-D", "-N", host, "-f", str(root / "slurm.conf"))

        def idle() -> bool:
            r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                               text=True, timeout=30)
            return r.returncode == 0 and r.stdout.strip() == "idle"

        _wait_for("slurmctld + slurmd (node idle)", idle, procs, cluster)
        yield cluster
    finally:
        _stop(procs, env)
        shutil.rmtree(root, ignore_errors=True)


def _single_run(*args: object, env: dict[str, str]) -> None:
    p = subprocess.run([sys.executable, "-m", "tilesegcli", "predict", *map(str, args),
                        "--model", "simple", "-q"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr


def test_example_sbatch_4_task_array_over_one_slide(slurm, slide_svs, tmp_path, feature_set):
    _single_run(slide_svs, "-o", tmp_path / "ref" / "ref.geojson", env=slurm.env)
    out = tmp_path / "out" / "slide.geojson"
    env_model = dict(slurm.env, MODEL="simple")
    p = subprocess.run(["sbatch", "--wait", "--array=1-4", "--cpus-per-task=1", "--mem=200M",
                        f"--chdir={tmp_path}", f"--output={tmp_path}/log-%A_%a.log",
                        str(ROOT / "examples" / "slurm_array.sbatch"), str(slide_svs), str(out)],
                       env=env_model, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    logs = {q.name: q.read_text() for q in tmp_path.glob("log-*.log")}
    assert p.returncode == 0, (p.stdout, p.stderr, logs, slurm.logs())
    assert len(logs) == 4
    summaries = [json.loads((tmp_path / "out" / f"slide.task{i}.json").read_text())
                 for i in range(1, 5)]
    slides = [s["slides"][0] for s in summaries]
    assert all(s["ok"] for s in summaries)
    assert {sl["status"] for sl in slides} <= {"done", "waiting"} and any(
        sl["status"] == "done" for sl in slides)
    # four disjoint shards: every selected tile computed exactly once over the array
    assert sum(sl["tiles_computed"] for sl in slides) == slides[0]["tiles_selected"]
    assert all(sl["tiles_shard"] > 0 for sl in slides)
    waiting_logs = [t for t in logs.values() if "no output yet" in t]
    assert len(waiting_logs) == sum(sl["status"] == "waiting" for sl in slides)
    assert feature_set(out) == feature_set(tmp_path / "ref" / "ref.geojson")


def test_one_slide_per_task_recipe_over_3_slides(slurm, tmp_path, feature_set):
    (tmp_path / "in").mkdir()
    slides = [synthetic.write_slide_tiff(tmp_path / "in" / f"s{k}.svs",
                                         synthetic.tissue_like(900, 700, seed=20 + k, n_blobs=2),
                                         kind="svs", mpp=0.5, tile=256) for k in range(3)]
    (tmp_path / "slides.txt").write_text("".join(f"{s}\n" for s in slides))
    _single_run(*slides, "--outdir", tmp_path / "ref", env=slurm.env)
    job = tmp_path / "recipe.sbatch"
    job.write_text("#!/bin/bash\nset -euo pipefail\n"
                   'sed -n "${SLURM_ARRAY_TASK_ID}p" slides.txt | tileseg predict --inputs - '
                   "--outdir results --model simple "
                   '--summary "task${SLURM_ARRAY_TASK_ID}.json"\n')
    p = slurm.sbatch_wait("--array=1-3", f"--output={tmp_path}/log-%A_%a.log", str(job),
                          cwd=tmp_path)
    assert p.returncode == 0, (p.stdout, p.stderr, slurm.logs())
    for k, s in enumerate(slides, start=1):
        sl = json.loads((tmp_path / f"task{k}.json").read_text())["slides"][0]
        assert sl["input"] == str(s) and sl["status"] == "done"
        assert sl["tiles_computed"] == sl["tiles_selected"] == sl["tiles_shard"]  # whole slide
        assert feature_set(tmp_path / "results" / f"{s.stem}.geojson") == \
            feature_set(tmp_path / "ref" / f"{s.stem}.geojson")


def _job_state(cluster: LocalSlurm, job: str) -> dict[str, str]:
    """``scontrol show job`` as key -> value (the record stays MinJobAge = 300 s after the end)."""
    r = subprocess.run(["scontrol", "-o", "show", "job", job], env=cluster.env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)


def _wait_state(cluster: LocalSlurm, job: str, states: set[str], timeout: float = 120
                ) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (info := _job_state(cluster, job))["JobState"] not in states:
        assert time.monotonic() < deadline, (info, cluster.logs())
        time.sleep(0.05)
    return info


def _wait_gone(cluster: LocalSlurm, job: str, timeout: float = 120) -> None:
    """Until squeue no longer lists the job (also not COMPLETING: its processes have ended)."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=cluster.env,
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and not r.stdout.strip():
            return
        assert time.monotonic() < deadline, (r.stdout, r.stderr, cluster.logs())
        time.sleep(0.05)


def _tiles_done(store: Path) -> int:
    if not (store / "zarr.json").is_file():  # not created yet (the task is still starting)
        return 0
    s = TileStore.open(store)
    return int(s.selected.sum()) - s.remaining()


BATCH = 2  # tiles per model call: small, so the job runs for seconds (103 tiles, about 7 s of
# inference here) and the batches a SIGTERM may lose or flush are small against the count


def test_scancel_then_resubmit_resumes_without_losing_or_redoing_tiles(
        slurm, tmp_path, feature_set, tmp_leftovers):
    slide = synthetic.write_slide_tiff(tmp_path / "big3.svs",
                                       synthetic.tissue_like(3600, 3000, seed=7, n_blobs=6),
                                       kind="svs", mpp=0.5, tile=256)
    _single_run(slide, "-o", tmp_path / "ref" / "ref.geojson", env=slurm.env)
    out, store = tmp_path / "out" / "big3.geojson", tmp_path / "out" / "big3.geojson.tiles.zarr"
    job = tmp_path / "one.sbatch"  # exec: see examples/slurm_array.sbatch
    job.write_text("#!/bin/bash\nset -euo pipefail\n"
                   f"exec tileseg predict {slide} -o {out} --model simple --batch-size {BATCH} "
                   "--num-workers 1 --summary run.json\n")
    sub = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=200M",
                          f"--chdir={tmp_path}", f"--output={tmp_path}/first.log", str(job)],
                         env=slurm.env, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, (sub.stderr, slurm.logs())
    first = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 240
    while _tiles_done(store) < 4:  # some tiles finished (a few batches in)
        state = _job_state(slurm, first)["JobState"]
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), (state, slurm.logs())
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.02)
    done_at_kill = _tiles_done(store)
    subprocess.run(["scancel", first], env=slurm.env, check=True, timeout=30)
    info = _wait_state(slurm, first, {"CANCELLED", "COMPLETED", "FAILED"})
    _wait_gone(slurm, first)  # the state changes at once; the task's processes end after it
    log_first = (tmp_path / "first.log").read_text()
    assert info["JobState"] == "CANCELLED", (info, log_first)
    done_after_kill = _tiles_done(store)
    selected = int(TileStore.open(store).selected.sum())
    # scancel's SIGTERM unwinds the task: it stores what the model had finished and says so
    m = re.search(r"stopped with (\d+) of (\d+) tile\(s\) stored by this run; (\d+) tile\(s\) "
                  r"the model had finished were not stored", log_first)
    assert m and "Traceback" not in log_first, log_first
    stored, todo, not_stored = map(int, m.groups())
    assert todo == selected and stored == done_after_kill  # the store began empty
    assert not_stored <= BATCH  # finished model work thrown away: at most one batch
    # nothing finished is lost; after the count was read the task could still store the rest of
    # the batch being written and the one handed over before SIGTERM arrived
    assert done_at_kill <= done_after_kill <= done_at_kill + 2 * BATCH < selected
    assert info["ExitCode"] == "130:0", info  # tileseg's own exit status for an interrupt
    assert not out.exists() and not (tmp_path / "run.json").exists()  # no output, no summary
    assert tmp_leftovers(tmp_path / "out") == []  # the streaming merge's temp output is gone

    p = slurm.sbatch_wait(f"--output={tmp_path}/second.log", str(job), cwd=tmp_path)
    assert p.returncode == 0, (p.stdout, p.stderr, (tmp_path / "second.log").read_text())
    summary = json.loads((tmp_path / "run.json").read_text())
    sl = summary["slides"][0]
    assert summary["exit_code"] == 0 and summary["complete"] and sl["status"] == "done"
    assert sl["tiles_selected"] == sl["tiles_done"] == selected
    # the resubmission computes exactly the tiles the killed task had not stored (no stored
    # tile twice), which is what was pending when scancel came less the batches flushed
    assert sl["tiles_computed"] == selected - done_after_kill
    assert selected - done_at_kill - 2 * BATCH <= sl["tiles_computed"] <= selected - done_at_kill
    assert feature_set(out) == feature_set(tmp_path / "ref" / "ref.geojson")
    assert tmp_leftovers(tmp_path / "out") == []
    assert "stopped with" not in (tmp_path / "second.log").read_text()
    print(f"selected={selected} done_at_kill={done_at_kill} done_after_kill={done_after_kill} "
          f"not_stored={not_stored} resubmission_computed={sl['tiles_computed']} batch={BATCH} "
          f"cancelled ExitCode={info['ExitCode']}")
