"""Stage kinds come from entry points: a third party's kind works like a built-in one, and the
project installs nothing under a generic top-level name."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from alto_bus import Client
from alto_bus.deploy.topology import TopologyError, load
from alto_bus.runtime.kinds import ENTRY_POINT_GROUP, known_kinds, stage_kind
from tests.support import running, write_topology

ROOT = Path(__file__).resolve().parents[2]

SHOUT = textwrap.dedent('''
    from alto_bus.deploy.topology import TopologyError
    from alto_bus.runtime.kinds import REQUIRED, StageKind
    from alto_bus.runtime.stage import FunctionStage

    def check(values, input, label, check_handlers):
        if values["times"] < 1:
            raise TopologyError(f"{label}: field 'times' must be >= 1, got {values['times']}")
        return False

    def build(config):
        n = config.fields["times"]
        return FunctionStage(lambda item: str(item).upper() + "!" * n)

    KIND = StageKind("shout", {"times": ((int,), REQUIRED)}, build=build, check=check)
''')


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A package that brings the kind 'shout', installed the way pip installs one: a module
    and a dist-info folder whose entry_points.txt names it."""
    site = tmp_path / "site"
    (site / "shout_kind-0.1.dist-info").mkdir(parents=True)
    (site / "shout_kind.py").write_text(SHOUT)
    (site / "shout_kind-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-kind\n"
                                                                "Version: 0.1\n")
    (site / "shout_kind-0.1.dist-info" / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nshout = shout_kind:KIND\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))  # the launched processes find it too
    return site


def test_the_built_in_kinds_are_registered_as_entry_points():
    assert {"function", "aggregate", "lm"} <= set(known_kinds())
    assert stage_kind("aggregate").keyed and not stage_kind("function").keyed


def test_an_unknown_kind_is_refused_naming_the_known_ones(tmp_path):
    path = write_topology(tmp_path, {"stage": [{"name": "a", "kind": "shuot", "times": 1}]})
    with pytest.raises(TopologyError, match=r"stage 'a': field 'kind': no stage kind named 'shuot'; "
                                            r"known kinds: aggregate, function, lm"):
        load(path)


def test_a_third_party_kind_is_validated_with_its_own_fields(third_party, tmp_path):
    path = write_topology(tmp_path, {"stage": [{"name": "loud", "kind": "shout", "times": 0}]})
    with pytest.raises(TopologyError, match=r"stage 'loud': field 'times' must be >= 1, got 0"):
        load(path)
    path = write_topology(tmp_path, {"stage": [{"name": "loud", "kind": "shout", "times": 2, "tone": "x"}]})
    with pytest.raises(TopologyError, match=r"stage 'loud': unknown field 'tone'"):
        load(path)


def test_a_third_party_kind_serves_requests_in_a_launched_topology(third_party, tmp_path):
    topo = {"stage": [
        {"name": "split", "kind": "function", "handler": "tests.integration.handlers:split"},
        {"name": "loud", "kind": "shout", "times": 2, "input": "split", "replicas": 2},
    ]}
    with running(write_topology(tmp_path, topo)) as sup:
        with Client(sup.addresses["gateway"], timeout=30) as client:
            result = client.submit("a bc").result()
    assert sorted(result) == ["A!!", "BC!!"]


def test_check_and_launch_find_the_handlers_beside_the_topology_file(tmp_path):
    words = ROOT / "topology" / "examples" / "words.toml"
    out = subprocess.run([sys.executable, "-m", "alto_bus", "check", str(words)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with running(words) as sup:
        with Client(sup.addresses["gateway"], timeout=30) as client:
            result = client.submit("hello big world").result()
    assert [r["word"] for r in result] == ["HELLO", "BIG", "WORLD"]


def test_the_wheel_installs_only_alto_bus_and_alto_workers(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("alto_bus-*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist()}
        entry_points = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"alto_bus", "alto_workers"}
    assert f"[{ENTRY_POINT_GROUP}]" in entry_points and "lm = alto_workers.lm.worker:KIND" in entry_points
