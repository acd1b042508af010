"""Bad input ends in one clear line naming the host or the file, within seconds, nothing left running."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.cluster.conftest import ROOT, H, host_tables, write
from tests.cluster.test_curve import make_keys
from tests.cluster.test_curve import topology as curve_topology


def topology(cluster, **stage) -> dict:
    return {
        "host": host_tables(cluster),
        "stage": [{"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 3, **stage}],
    }


def launch(hosts, path, *extra, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "scripts/launch_cluster.py", str(path), *hosts.ssh_args(), *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - t0


def test_an_unreachable_host_is_named_and_nothing_starts(clean, tmp_path):
    hosts = clean
    topo = topology(hosts)
    topo["host"].append({"name": "ghost", "address": f"198.18.{hosts.k}.99"})  # no namespace answers there
    out, took = launch(hosts, write(tmp_path, topo), "--connect-timeout", "3")
    print(out.stderr.strip(), f"({took:.1f} s)")
    assert out.returncode == 1
    assert "host 'ghost'" in out.stderr and f"198.18.{hosts.k}.99" in out.stderr
    assert "nothing was started" in out.stderr
    assert "gateway" not in out.stdout
    assert took < 15


def test_a_host_name_in_no_host_table_is_named(clean, tmp_path):
    hosts = clean
    path = write(tmp_path, topology(hosts))
    out, _ = launch(hosts, path, "--hosts", f"{hosts.hosts[0].name},gpu9")
    assert out.returncode == 2 and "no [[host]] named 'gpu9'" in out.stderr and str(path) in out.stderr
    path = write(tmp_path, topology(hosts, hosts=["gpu9"]), "pinned.toml")
    out, _ = launch(hosts, path)
    assert out.returncode == 2
    assert "stage 'split'" in out.stderr and "field 'hosts'" in out.stderr and "'gpu9'" in out.stderr
    assert "gateway" not in out.stdout


def test_more_gpus_than_the_hosts_have_is_refused_naming_the_stage(clean, tmp_path):
    hosts = clean
    topo = topology(hosts, gpus=2)
    topo["host"] = host_tables(hosts, gpus=[2, 2, 0])
    out, _ = launch(hosts, write(tmp_path, topo))
    assert out.returncode == 2
    assert "stage 'split'" in out.stderr and "asks 6 GPU(s)" in out.stderr and "have 4 in all" in out.stderr
    assert "gateway" not in out.stdout


@pytest.mark.parametrize("damage, words", [
    ("missing public", ["[security] field 'worker_key'", "worker.key: no such key file"]),
    ("garbage public", ["[security] field 'broker_key'", "broker.key", "not a CURVE key"]),
    ("missing secret on a host", ["host 'alto", "h2.key_secret: no such key file", "nothing was started"]),
])
def test_a_missing_or_wrong_key_file_is_named(clean, tmp_path, damage, words):
    hosts = clean
    make_keys(tmp_path)
    path = write(tmp_path, curve_topology(hosts))
    if damage == "missing public":
        (tmp_path / "keys/worker.key").unlink()
    elif damage == "garbage public":
        (tmp_path / "keys/broker.key").write_text('public-key = "0123456789"\n')
    else:
        (tmp_path / "keys/h2.key_secret").unlink()
    out, took = launch(hosts, path)
    print(out.stderr.strip())
    assert out.returncode in (1, 2)
    for w in words:
        assert w in out.stderr, w
    assert "gateway" not in out.stdout
    assert took < 20


def test_alto_node_pointed_at_a_silent_broker_says_so_and_leaves_nothing(clean, tmp_path):
    hosts = clean
    h1, h2, _ = hosts.hosts
    path = write(tmp_path, topology(hosts))
    # Something listens, accepts and never answers (a broker that hangs); then nothing at all.
    with socket.socket() as silent:
        silent.bind((hosts.login, 0))
        silent.listen()
        for address in (f"tcp://{hosts.login}:{silent.getsockname()[1]}", f"tcp://{h1.address}:5999"):
            t0 = time.monotonic()
            out = hosts.exec(h2, [sys.executable, "-m", "alto_bus", "node", str(path), "--host", h2.name,
                                  "--broker", address, "--broker-wait", "3"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stdout, stderr = out.communicate(timeout=30)
            took = time.monotonic() - t0
            print(stderr.strip(), f"({took:.1f} s)")
            assert out.returncode == 1
            assert f"host '{h2.name}'" in stderr and address in stderr and "did not answer within 3 s" in stderr
            assert took < 10
            assert not hosts.app_pids(h2)


def test_alto_node_whose_key_the_broker_does_not_allow_says_so(clean, launches, tmp_path):
    hosts = clean
    h1, h2, h3 = hosts.hosts
    make_keys(tmp_path)
    topo = curve_topology(hosts)
    run = launches(write(tmp_path, topo), hosts, "--hosts", f"{h1.name},{h2.name}")
    run.ready()
    # The same file on h3, but h3's key is one the broker's file does not name or allow.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(tmp_path / "keys", other / "keys")
    topo["host"][2]["key"] = "keys/stranger.key"
    path = write(other, topo)
    t0 = time.monotonic()
    out = hosts.exec(h3, [sys.executable, "-m", "alto_bus", "node", str(path), "--host", h3.name, "--hosts",
                          f"{h1.name},{h2.name},{h3.name}", "--broker", run.value("control"),
                          "--broker-wait", "3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
    _, stderr = out.communicate(timeout=30)
    print(stderr.strip().splitlines()[-1], f"({time.monotonic() - t0:.1f} s)")
    assert out.returncode == 1
    assert f"host '{h3.name}'" in stderr and "refused this host's key" in stderr and "stranger.key" in stderr
    assert not hosts.app_pids(h3)
    run.proc.terminate()
    assert run.wait(60) == 0
