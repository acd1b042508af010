"""The soak's bookkeeping (scripts/soak_check.py): request outcomes and RSS flatness."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("soak_check", Path(__file__).parents[2] / "scripts" / "soak_check.py")
sc = importlib.util.module_from_spec(_spec)
sys.modules["soak_check"] = sc  # its dataclasses look their module up
_spec.loader.exec_module(sc)

MIB = 1 << 20


def test_results_and_clear_errors_are_fine_and_everything_else_is_not():
    o = sc.Outcomes()
    for _ in range(4):
        o.submit()
    assert o.result(["A"], ["A"]) == sc.RESULT
    assert o.error("verify", "instance 3 died (no heartbeat for 2.0 s)") == sc.ERROR
    assert o.error("gateway", "the gateway at tcp://127.0.0.1:5 has not answered for 5.1 s") == sc.ERROR
    assert o.in_flight == 1 and not o.ok          # one has not ended yet
    assert o.result(["A"], ["A"]) == sc.RESULT
    assert o.ok and o.summary()["ended"] == {"result": 2, "error": 2}
    assert o.summary()["errors"]["verify: instance 3 died (no"] == 1


def test_a_client_timeout_a_mismatch_an_unclear_error_or_a_hang_fails_the_soak():
    for end in (lambda o: o.error("client", "no answer from the gateway at tcp://127.0.0.1:5"),
                lambda o: o.result(["a"], ["A"]),
                lambda o: o.error("stage", ""),
                lambda o: o.hung(1)):
        o = sc.Outcomes()
        o.submit()
        end(o)
        assert o.in_flight == 0 and not o.ok, o.summary()
        assert o.summary()["examples"] or o.ended[sc.HUNG] == 1


def series(values_mib, start=0.0, step=5.0):
    return [(start + i * step, int(v * MIB)) for i, v in enumerate(values_mib)]


def test_rss_that_settles_after_warm_up_is_flat():
    warm = [20, 40, 60, 70]                     # growing while warming up: not judged
    steady = [80, 81, 79, 82, 80, 78, 81, 83, 80, 82, 81, 84]
    f = sc.rss_flatness("broker", series(warm + steady), warm_until=20.0, min_span=30.0)
    assert f.flat is True and abs(f.growth) < 0.05 and f.peak == 84 * MIB
    assert "flat" in f.line() and "broker" in f.line()


def test_rss_that_keeps_growing_is_not_flat():
    growing = [80 + 3 * i for i in range(16)]   # +3 MiB every sample: +56% by the end
    f = sc.rss_flatness("worker", series(growing), warm_until=0.0, min_span=30.0)
    assert f.flat is False and f.growth > 0.10 and "GROWING" in f.line()


def test_a_process_seen_too_briefly_after_warm_up_is_not_judged():
    f = sc.rss_flatness("replacement", series([50] * 20), warm_until=80.0, min_span=30.0)
    assert f.flat is None and "too short-lived" in f.line()
    f = sc.rss_flatness("short", series([50] * 12, step=1.0), warm_until=0.0, min_span=30.0)
    assert f.flat is None
