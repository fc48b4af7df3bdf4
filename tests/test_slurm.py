"""The workflow through a real single-node SLURM (slurmctld + slurmd + munged on localhost), with the shipped
profile config/profiles/slurm: every job goes through sbatch, and the results equal a local run's.

SLURM comes from Debian's slurm-wlm and munge, installed here when missing (root only); there is no
accounting database, so the profile's `squeue` status command answers job states (MinJobAge keeps finished
jobs visible) and jobcomp/filetxt keeps SLURM's own record of every finished job. The configuration goes
to SLURM's default path (/etc/slurm/slurm.conf, removed afterwards): the job step executor clears SLURM_*
variables, SLURM_CONF included, before its nested srun, so a cluster's configuration must be where the
commands look by default, as it is on a real cluster."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import reduced_demo as demo

pytestmark = pytest.mark.slurm

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue")
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
TARGETS = ("results/demo/model", "results/demo/cohort_summary.txt")


def install_slurm() -> None:
    """Debian's slurm-wlm and munge, when missing; skips where they cannot be installed."""
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS):
        return
    if os.geteuid() != 0:
        pytest.skip("SLURM (slurm-wlm, munge) is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and this system has no apt-get to install Debian's slurm-wlm")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in ("apt-get update -q", "apt-get install -y -q slurm-wlm munge"):
        done = subprocess.run(
            ["flock", "/tmp/apt.lock", "sh", "-c", command], env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=multimodaltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MinJobAge=3600
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs=4 RealMemory=64000 State=UNKNOWN
PartitionName=multimodal Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node SLURM cluster run by this test's own daemons; yields the environment that reaches it."""
    install_slurm()
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = DEFAULT_CONF
    if conf.exists():
        pytest.skip(f"{conf} exists (a SLURM installation of this machine's own): not replacing it")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        SLURM_CONF.format(host=host, root=root, user=getpass.getuser(), ctld_port=free_port(), d_port=free_port())
    )
    env = demo.environment()
    env.pop("SLURM_CONF", None)
    processes = []
    try:
        munge = [sbin("munged"), "-F", "--force", f"--key-file={key}", f"--socket={root}/munge.socket"]
        munge += [f"--pid-file={root}/munged.pid", f"--log-file={root}/log/munged.log", f"--seed-file={root}/seed"]
        for command in (munge, [sbin("slurmctld"), "-D", "-i"], [sbin("slurmd"), "-D", "-N", host]):
            log = open(root / "log" / f"{Path(command[0]).name}.out", "w")  # noqa: SIM115 (closed with the process)
            processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
            time.sleep(1)
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            state = done.stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        logs = "\n".join(p.read_text()[-1500:] for p in sorted((root / "log").iterdir()))
        assert state == "idle", f"the SLURM node did not come up (state {state!r}):\n{logs}"
        yield {"env": env, "root": root}
    finally:
        for process, log in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        conf.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    demo.simulate(root, patients=30)
    return root / "demo"


def prepare(workdir: Path, cohort: Path) -> None:
    shutil.copytree(cohort, workdir / "demo")
    demo.write_config(workdir, model={"baseline": False, "bootstrap": 10, "epochs": 3})


def test_demo_runs_through_slurm_and_equals_a_local_run(slurm, cohort, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    for workdir in (local, cluster):
        prepare(workdir, cohort)
    profile = demo.REPO / "config" / "profiles" / "slurm"
    args = ["--workflow-profile", str(profile), "--jobs", "4", *TARGETS]
    # Same threads as the local run (the profile asks more of a real cluster), and quick polling here.
    args += ["--set-threads", "train=2", "explain=2", "--slurm-init-seconds-before-status-checks", "2"]
    args += ["--seconds-between-status-checks", "3"]
    # the local run alongside (its own working directory), to keep the test's wall time down
    local_run = subprocess.Popen(
        [str(demo.BIN / "snakemake"), "--snakefile", str(demo.REPO / "Snakefile"), "--configfile", "reduced.yaml"]
        + ["--cores", "2", *TARGETS],
        cwd=local,
        env=demo.environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    done = demo.snakemake(cluster, *args, env=slurm["env"], check=False)
    _, local_err = local_run.communicate(timeout=2400)
    assert local_run.returncode == 0, local_err[-3000:]
    transcript = done.stdout + done.stderr
    assert done.returncode == 0, transcript[-4000:]

    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", transcript))
    logs = sorted((cluster / ".snakemake" / "log").glob("*.snakemake.log"))
    assert logs and all(f"SLURM jobid {job}" in logs[-1].read_text() for job in submitted.values())
    local_jobs = re.findall(r"^localrule (\w+):", transcript, flags=re.M)
    assert not local_jobs, f"ran outside SLURM: {local_jobs}"
    # simulate is off here: ingest (2 chunks x 2 modalities + expression), assemble, train, inspect
    assert len(submitted) == 8, submitted

    history = (slurm["root"] / "jobcomp.txt").read_text()
    for slurm_id in submitted.values():
        line = re.search(rf"^JobId={slurm_id} .*$", history, flags=re.M)
        assert line and "JobState=COMPLETED" in line.group(0), (slurm_id, history[-2000:])
    queue = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%T"], env=slurm["env"], capture_output=True, text=True
    ).stdout
    assert all(f"{slurm_id}|COMPLETED" in queue for slurm_id in submitted.values()), queue

    for name in ("metrics.json", "predictions.tsv", "folds.tsv"):
        ours, theirs = (w / "results/demo/model" / name for w in (local, cluster))
        assert demo.digest(ours) == demo.digest(theirs), name
    ours, theirs = (w / "results/demo/cohort_summary.txt" for w in (local, cluster))
    created = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*")  # the store's creation time
    assert created.sub("<created>", ours.read_text()) == created.sub("<created>", theirs.read_text())
