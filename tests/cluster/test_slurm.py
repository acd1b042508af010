"""The Slurm way in: a real Slurm (slurmctld here, one slurmd per namespace), and the same
``alto node --slurm`` under the exact environment srun sets, without Slurm.

The real one: munged and slurmctld run in the test's namespace (the login node),
``slurmd -N <host>`` in each host namespace (entered with ``nsenter --net`` so that it
sees the machine's cgroup file system), all with files and ports of their own in a
temporary folder. As every cluster test, it fails when it cannot run: Slurm is installed
by scripts/setup.sh (the tests install nothing), and one that does not start is an error.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alto_bus import Client
from alto_bus.deploy.node import slurm_port_base
from tests.cluster.conftest import ROOT, H, gone, host_tables, wait_for, write
from tests.cluster.netns import Hosts, cmdline, missing
from tests.support import alive

# What the real Slurm test runs, and the Debian package of each (scripts/setup.sh installs them).
SLURM_TOOLS = {"slurmctld": "slurmctld", "slurmd": "slurmd", "srun": "slurm-client", "salloc": "slurm-client",
               "sinfo": "slurm-client", "scancel": "slurm-client", "munged": "munge", "nsenter": "util-linux",
               "pgrep": "procps"}


def topology(hosts: Hosts) -> dict:
    return {
        "broker": {"heartbeat_interval": 0.2, "heartbeat_liveness": 4},
        "host": host_tables(hosts, gpus=[1, 1, 1]),
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 3},
            {"name": "where", "kind": "function", "handler": f"{H}:where", "input": "split", "replicas": 3,
             "gpus": 1},
        ],
    }


def check(run_lines, hosts: Hosts, texts_n: int = 200) -> set[int]:
    gateway = next(ln.split()[-1] for ln in run_lines if "gateway " in ln)
    texts = [f"p{i} q{i}" for i in range(texts_n)]
    with Client(gateway) as client:
        results = [f.result(timeout=60) for f in [client.submit(t) for t in texts]]
    assert [[r["word"] for r in res] for res in results] == [t.upper().split() for t in texts]
    assert {r["cuda"] for res in results for r in res} == {"0"}
    pids = {h.name: hosts.app_pids(h) for h in hosts.hosts}
    where = {r["pid"] for res in results for r in res}
    for h in hosts.hosts:  # every host runs a node, and one "where" instance that served requests
        assert any(" node " in cmdline(p) for p in pids[h.name]), h.name
        assert where & pids[h.name], h.name
    return set().union(*pids.values())


# -- srun's environment, without Slurm ------------------------------------------------------


def srun_env(hosts: Hosts, index: int, job_id: int) -> dict[str, str]:
    """What srun sets for task ``index`` of ``srun -N3 --ntasks-per-node=1`` (seen on slurm-wlm 22.05)."""
    n = len(hosts.hosts)
    nodelist = f"alto{hosts.k}h[1-{n}]"
    name = hosts.hosts[index].name
    return {
        "SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id), "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist, "SLURM_JOB_NUM_NODES": str(n),
        "SLURM_NNODES": str(n), "SLURM_STEP_NUM_NODES": str(n), "SLURM_NTASKS": str(n), "SLURM_NPROCS": str(n),
        "SLURM_STEP_NUM_TASKS": str(n), "SLURM_TASKS_PER_NODE": f"1(x{n})", "SLURM_STEP_TASKS_PER_NODE": f"1(x{n})",
        "SLURM_NODEID": str(index), "SLURM_PROCID": str(index), "SLURM_LOCALID": "0", "SLURM_GTIDS": str(index),
        "SLURMD_NODENAME": name, "SLURM_TOPOLOGY_ADDR": name, "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
        "SLURM_CPUS_ON_NODE": "1", "SLURM_JOB_CPUS_PER_NODE": f"1(x{n})", "SLURM_CLUSTER_NAME": "alto",
        "SLURM_JOB_PARTITION": "main", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_LAUNCH_NODE_IPADDR": hosts.login,
    }


def test_alto_node_under_the_environment_srun_sets(clean, tmp_path):
    hosts = clean
    path = write(tmp_path, topology(hosts))
    job_id = 4242
    procs = []
    try:
        # As srun starts them: all at once, the broker's node not necessarily first.
        for i in reversed(range(len(hosts.hosts))):
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
            env.update(srun_env(hosts, i, job_id))
            procs.append(hosts.exec(hosts.hosts[i], [sys.executable, "-m", "alto_bus", "node", str(path),
                                                     "--slurm"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True))
        first = procs[-1]
        lines = []
        while not lines or lines[-1] != "ready":
            line = first.stdout.readline()
            assert line, f"node 0 exited: {first.wait()} {first.stderr.read()[-2000:]}"
            lines.append(line.strip())
        assert f"control tcp://{hosts.hosts[0].address}:{slurm_port_base(job_id)}" in lines
        everything = check(lines, hosts)
    finally:
        for p in procs:  # what slurmstepd does on scancel: SIGTERM to every task
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in procs]
    assert codes == [0, 0, 0], [p.stderr.read()[-1000:] for p in procs]
    wait_for(lambda: gone(everything), 30, "every process to exit")


# -- a real Slurm -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slurm:
    def __init__(self, hosts: Hosts, folder: Path) -> None:
        self.hosts = hosts
        self.dir = folder
        self.conf = folder / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.pidfiles: list[Path] = []

    def up(self) -> Slurm:
        d = self.dir
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = d / "munge.sock"
        subprocess.run(["munged", "--force", f"--socket={sock}", f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
                        f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"], check=True, timeout=30)
        self.pidfiles.append(d / "munged.pid")
        nodes = "\n".join(f"NodeName={h.name} NodeAddr={h.address} CPUs=2 State=UNKNOWN" for h in self.hosts.hosts)
        self.conf.write_text(f"""ClusterName=alto
SlurmctldHost={socket.gethostname()}({self.hosts.login})
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}/%n
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d}/slurmd.%n.pid
SlurmctldLogFile={d / 'slurmctld.log'}
SlurmdLogFile={d}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
{nodes}
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        subprocess.run(["slurmctld"], env=self.env, check=True, timeout=30)
        self.pidfiles.append(d / "slurmctld.pid")
        for h in self.hosts.hosts:
            (d / "spool" / h.name).mkdir()
            subprocess.run(["nsenter", f"--net=/run/netns/{h.ns}", "slurmd", "-N", h.name], env=self.env,
                           check=True, timeout=30)
            self.pidfiles.append(d / f"slurmd.{h.name}.pid")
        wait_for(lambda: self.idle() == len(self.hosts.hosts), 30, "every slurmd to be idle in sinfo")
        return self

    def idle(self) -> int:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True)
        return sum(1 for ln in out.stdout.splitlines() if ln.split()[-1] == "idle")

    def down(self) -> None:
        subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=30)
        for f in reversed(self.pidfiles):
            try:
                pid = int(f.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda pid=pid: not alive(pid), 15, f"{f.name}")
            except (OSError, ValueError, IndexError):
                pass


@pytest.fixture
def slurm(clean, tmp_path):
    reason = missing(SLURM_TOOLS, "the real Slurm test")
    if reason:
        pytest.fail(reason)
    s = Slurm(clean, tmp_path / "slurm")
    (tmp_path / "slurm").mkdir()
    try:
        s.up()
    except Exception:
        s.down()
        raise
    try:
        yield s
    finally:
        s.down()


def test_launch_cluster_inside_a_slurm_allocation(slurm, tmp_path):
    hosts = slurm.hosts
    path = write(tmp_path, topology(hosts))
    t0 = time.monotonic()
    # salloc gives the allocation; inside it the launch script runs srun, one `alto node` per node.
    proc = subprocess.Popen(["salloc", f"--nodes={len(hosts.hosts)}", sys.executable, "scripts/launch_cluster.py",
                             str(path), "--slurm"], cwd=ROOT, env=slurm.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = []
        while not lines or not lines[-1].endswith("ready"):
            line = proc.stdout.readline()
            assert line, f"the launch exited: {proc.wait()} {proc.stderr.read()[-3000:]}"
            lines.append(line.strip())
        print(f"salloc to ready, {len(hosts.hosts)} Slurm nodes: {time.monotonic() - t0:.1f} s")
        everything = check(lines, hosts)
        job = json.dumps(lines)
        assert "control tcp://" in job
        # Ctrl-C / SIGTERM to the launch script: srun cancels the step, every node stops.
        launcher = next(int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                        text=True).stdout.split())
        os.kill(launcher, signal.SIGTERM)
        proc.wait(60)
        wait_for(lambda: gone(everything), 30, "every process on every node to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
