"""The SLURM launcher's scripts, run under fake `sbatch`/`srun`/`scontrol` and a fake `python`
that stands for `jdiffseg`: signal, requeue, resume, then the dependent jobs in order."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jdiffseg.cli import sweep as sweep_cli
from jdiffseg.study import slurm

CONFIG = """
from jdiffseg.config import schema

def get_config(arg):
    c = schema.base_config()
    c.model.mode = arg or "diffusion"
    return c
"""

SWEEP = """
SLURM = {"gpus-per-node": 2, "cpus-per-task": 8}

def sweep(add):
    add("cfg.py", name="seg")
    add("cfg.py:feedforward", name="ff")
    add("cfg.py:image_generation", name="gen")
"""

FAKES = {
    "sbatch": """
n=$(( $(cat "$FAKE_LOG.n" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_LOG.n"
echo "sbatch $n $*" >> "$FAKE_LOG"
echo "$n;cluster"
""",
    "srun": 'exec "$@"\n',
    "scontrol": 'echo "scontrol $*" >> "$FAKE_LOG"\n',
    # `python -m jdiffseg.cli.main CMD ...`: training the run named by FAKE_HOLD without a
    # checkpoint holds until SIGTERM, saves a "checkpoint" and exits 143, else it finishes;
    # FAKE_FAIL makes it crash.
    "python": """
cmd=$3; shift 3
for a in "$@"; do
  case $a in --workdir=*) w=${a#--workdir=};; --config=*) c=${a#--config=};; esac
done
echo "$cmd ${w:-$1}" >> "$FAKE_LOG"
case $cmd in
  train)
    [ -f "${c%%:*}" ] || { echo "no config file ${c%%:*}" >&2; exit 3; }
    mkdir -p "$w"
    if [ "${FAKE_HOLD:-}" = "${w##*/}" ] && [ ! -e "$w/checkpoint" ]; then
      trap 'touch "$w/checkpoint"; exit 143' TERM
      touch "$w/started"
      while :; do sleep 0.02; done
    fi
    [ -z "${FAKE_FAIL:-}" ] || exit 1
    touch "$w/finished.json" ;;
  evaluate) mkdir -p "$w/eval" && touch "$w/eval/metrics.json" ;;
  analyze) mkdir -p "$w/analysis" && touch "$w/analysis/timesteps.json" ;;
esac
""",
}


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A sweep directory written through the CLI with the fakes first on PATH (so it is
    submitted), and a helper running one array task as SLURM would, from another directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "cfg.py").write_text(CONFIG)
    (tmp_path / "grid.py").write_text(SWEEP)
    log = tmp_path / "log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.chdir(tmp_path)  # config paths in the sweep file are relative to here
    status = sweep_cli.main([
        "--config=grid.py", "--launcher=slurm", "--sweep_dir=out", "--gpus_per_node=4",
        "--time=02:00:00", "--partition=gpu", "--account=lab", "--sbatch=--qos=high",
        "--sbatch=exclusive", "--signal_grace=120", "--max_requeues=3",
    ])
    assert status == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run_task(script: Path, task: int | None, **env: str) -> subprocess.Popen:
        env = {**os.environ, "SLURM_JOB_ID": f"9{task}", **env}
        if task is not None:
            env["SLURM_ARRAY_TASK_ID"] = str(task)
        return subprocess.Popen(["bash", str(script)], cwd=elsewhere, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    return tmp_path / "out", log, run_task


def _log(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _array(script: Path) -> list[int]:
    ids = re.search(r"^#SBATCH --array=(\S+)$", script.read_text(), re.M).group(1)
    return [int(i) for i in ids.split(",")]


def test_headers_take_flags_over_the_sweep_file_and_paths_are_absolute(cluster):
    out, _, _ = cluster
    train = (out / "train.sbatch").read_text()
    for line in ("--array=0,1,2", "--gpus-per-node=4", "--cpus-per-task=8", "--time=02:00:00",
                 "--partition=gpu", "--account=lab", "--qos=high", "--exclusive",
                 "--signal=B:TERM@120", "--requeue", "--open-mode=append",
                 f"--output={out}/slurm/train_%A_%a.out"):
        assert f"#SBATCH {line}\n" in train
    assert f"--config={out.parent}/cfg.py:feedforward " in train
    assert f"--workdir={out}/seg " in train
    evaluate, analyze = (out / "evaluate.sbatch").read_text(), (out / "analyze.sbatch").read_text()
    assert "#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=4" in analyze
    assert _array(out / "evaluate.sbatch") == [0, 1]  # image generation is not evaluated
    assert _array(out / "analyze.sbatch") == [0]  # the timestep analysis is for diffusion runs
    assert f"evaluate --workdir={out}/ff)" in evaluate
    report = (out / "report.sbatch").read_text()
    assert "--gpus-per-node" not in report and "#SBATCH --partition=gpu" in report
    assert report.rstrip().endswith(f"python -m jdiffseg.cli.main report {out}")


def test_signal_requeues_then_resumes_and_dependents_run_in_order(cluster):
    out, log, run_task = cluster
    submitted = [line.split() for line in _log(log) if line.startswith("sbatch")]
    jobs = {Path(words[-1]).stem: (words[1], words[2:-1]) for words in submitted}
    assert list(jobs) == ["train", "evaluate", "analyze", "report"]
    train_id, eval_id, analyze_id = jobs["train"][0], jobs["evaluate"][0], jobs["analyze"][0]
    assert f"--dependency=aftercorr:{train_id}" in jobs["evaluate"][1]
    assert f"--dependency=aftercorr:{train_id}" in jobs["analyze"][1]
    assert f"--dependency=afterany:{eval_id}:{analyze_id}" in jobs["report"][1]
    log.unlink()

    # Task 0 is signalled ahead of the time limit: it saves, is unfinished and requeues itself.
    task = run_task(out / "train.sbatch", 0, FAKE_HOLD="seg")
    deadline = time.monotonic() + 10
    while not (out / "seg" / "started").exists():
        assert task.poll() is None and time.monotonic() < deadline, task.communicate()[0]
        time.sleep(0.02)
    task.send_signal(signal.SIGTERM)  # --signal=B:TERM reaches the batch shell only
    text, _ = task.communicate(timeout=10)
    assert task.returncode == 143, text
    assert (out / "seg" / "checkpoint").exists() and not (out / "seg" / "finished.json").exists()
    assert _log(log)[-1] == "scontrol requeue 90"
    # The requeued task resumes and finishes; the others train once; a finished run is skipped.
    for i in _array(out / "train.sbatch"):
        task = run_task(out / "train.sbatch", i, SLURM_RESTART_COUNT="1", FAKE_HOLD="seg")
        assert task.wait(timeout=10) == 0, task.communicate()[0]
    task = run_task(out / "train.sbatch", 0)
    assert task.wait(timeout=10) == 0 and "nothing to do" in task.communicate()[0]
    assert sum(line.startswith("scontrol") for line in _log(log)) == 1

    # The dependent jobs, each array task after its own run, then the report.
    for job in ("evaluate", "analyze"):
        for i in _array(out / f"{job}.sbatch"):
            assert run_task(out / f"{job}.sbatch", i).wait(timeout=10) == 0
    assert run_task(out / "report.sbatch", None).wait(timeout=10) == 0
    assert _log(log) == [
        f"train {out}/seg", "scontrol requeue 90", f"train {out}/seg", f"train {out}/ff",
        f"train {out}/gen", f"evaluate {out}/seg", f"evaluate {out}/ff", f"analyze {out}/seg",
        f"report {out}",
    ]


def test_a_crash_or_the_requeue_limit_stops_without_requeueing(cluster):
    out, log, run_task = cluster
    log.unlink()
    task = run_task(out / "train.sbatch", 1, FAKE_FAIL="1")
    assert task.wait(timeout=10) == 1 and "failed with status 1" in task.communicate()[0]
    task = run_task(out / "train.sbatch", 0, FAKE_HOLD="seg", SLURM_RESTART_COUNT="3")
    while not (out / "seg" / "started").exists():
        assert task.poll() is None, task.communicate()[0]
        time.sleep(0.02)
    task.send_signal(signal.SIGTERM)
    text, _ = task.communicate(timeout=10)
    assert task.returncode == 143 and "after 3 requeues; giving up" in text
    assert not any(line.startswith("scontrol") for line in _log(log))


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="'--qos high'"):
        slurm.parse_extra(["--qos high"])
    assert slurm.parse_extra(["#SBATCH --qos=high", "exclusive"]) == {
        "qos": "high", "exclusive": None}
    (tmp_path / "grid.py").write_text("def sweep(add):\n    add('missing.py', name='a')\n")
    assert sweep_cli.main([f"--config={tmp_path}/grid.py", "--launcher=slurm",
                           f"--sweep_dir={tmp_path}/out"]) == 2
    assert not (tmp_path / "out" / "train.sbatch").exists()
