"""What ``alto status`` shows of the membership table: every stage, its replicas, its
instances in order of registration, draining ones included."""

from __future__ import annotations

from alto_bus.control.membership import Membership


def test_status_lists_every_stage_and_its_instances_draining_ones_included():
    members = Membership(["fan", "slow"], 0.1, 3)
    a = members.add("fan", b"a", "tcp://h1:1", 11, "h1", now=0.0)
    b = members.add("fan", b"b", "tcp://h2:1", 12, "h2", now=0.0)
    members.drain(a.iid)
    status = members.status({"fan": 2, "slow": 1})
    assert list(status) == ["fan", "slow"]
    assert status["slow"] == {"replicas": 1, "instances": []}
    fan = status["fan"]
    assert fan["replicas"] == 2
    assert [(i["iid"], i["host"], i["draining"]) for i in fan["instances"]] == [(a.iid, "h1", True),
                                                                                 (b.iid, "h2", False)]
