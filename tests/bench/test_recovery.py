"""The recovery scenario notices a loss: the same cuts against fanwire with its history on (every owed
offset delivered once, in order: the goal met) and with ``--history-size 0`` (subscribers come back to
``recovered: false`` and holes: the goal missed, with the reasons, and the window still valid, because
the measurement itself worked). Real servers on 127.0.0.1, a few seconds each; and the settings that
would make the scenario itself lose history are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.scenarios.common import Ctx
from bench.scenarios.recovery import chaos_run, check_params, summarize

pytestmark = pytest.mark.timeout(90)


def params(**chaos: Any) -> dict[str, Any]:
    c = {"workers": 2, "subs": 8, "rooms": 1, "rate": 40, "cut_every": 0.4, "down_s": 0.15, "warmup": 0.2,
         "duration": 1.2, "settle_s": 3.0, "codec": "json", "load_processes": 1, "max_send_lag_ms": 50.0}
    c.update(chaos)
    return {"chaos": c, "price": {"fanout": []}}


def ctx(tmp_path: Path) -> Ctx:
    return Ctx(quick=True, out=tmp_path, log=lambda _line: None)


def test_cuts_with_history_lose_nothing(tmp_path: Path) -> None:
    p = params()
    r = chaos_run(ctx(tmp_path), p, 0)
    assert r["valid"], r["verdict"]
    assert r["goal_met"], r["goal_missed_why"]
    cnt = r["completeness"]
    assert cnt["owed"] > 0 and cnt["delivered"] == cnt["owed"] and r["delivered_pct"] == 100.0
    assert r["cuts"] >= 8 and r["recoveries"] == r["cuts"] and r["recover_ms"]["count"] == r["recoveries"]
    assert r["replayed"] > 0  # the subscribers were down while messages were published: they got them back
    assert r["server_metrics"]["fanwire_connections_opened_total"] >= r["cuts"]
    s = summarize(p, [r])
    assert s["delivered_pct"]["fanwire"] == 100.0 and s["duplicates"]["fanwire"] == 0
    assert s["goal_met"]["fanwire"] == 1


def test_cuts_without_history_are_reported_as_losses(tmp_path: Path) -> None:
    p = params(server_args=["--history-size", "0"], settle_s=1.0)
    r = chaos_run(ctx(tmp_path), p, 0)
    assert r["valid"], r["verdict"]  # the measurement worked ...
    assert not r["goal_met"]  # ... and the server missed the goal
    assert r["missing"] > 0 and r["history_lost"] > 0 and r["delivered_pct"] < 100.0
    why = " ".join(r["goal_missed_why"])
    assert "never delivered" in why and "recovered: false" in why
    s = summarize(p, [r])
    assert s["missing"]["fanwire"] == r["missing"] and s["goal_met"]["fanwire"] == 0
    assert s["goal_met"]["why"]["0"] == r["goal_missed_why"]


def test_settings_that_would_outrun_the_history_are_refused() -> None:
    check_params(params())
    with pytest.raises(ValueError, match="history"):
        check_params(params(rate=200, down_s=0.5))
    with pytest.raises(ValueError, match="cut_every"):
        check_params(params(cut_every=0.1, down_s=0.1))
