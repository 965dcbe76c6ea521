"""bench.provenance and ``bench run``'s refusal of a dirty tree: a results set comes from one clean commit,
unless the run is told ``--allow-dirty`` (then every result says so). Uses a throw-away git repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import cli
from bench.provenance import DirtyTree, busy_reasons, git_state, machine_state, require_clean, run_info

pytestmark = pytest.mark.timeout(60)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / "server.py").write_text("x = 1\n")
    (r / "results").mkdir()
    (r / "results" / "throughput.json").write_text("{}\n")
    git(r, "add", ".")
    git(r, "commit", "-q", "-m", "one")
    return r


def test_a_clean_tree_passes(repo: Path) -> None:
    state = git_state(repo)
    assert state.clean and state.is_repo and len(state.commit) == 40
    require_clean(state, allow_dirty=False)


def test_results_written_by_the_run_do_not_make_the_tree_dirty(repo: Path) -> None:
    (repo / "results" / "throughput.json").write_text('{"new": 1}\n')
    (repo / "results" / "latency.json").write_text("{}\n")
    assert git_state(repo).clean


def test_a_changed_or_untracked_file_is_dirty_and_refused(repo: Path) -> None:
    (repo / "server.py").write_text("x = 2\n")
    (repo / "new.py").write_text("")
    state = git_state(repo)
    assert not state.clean and len(state.dirty) == 2
    with pytest.raises(DirtyTree, match=r"(?s)uncommitted changes.*--allow-dirty"):
        require_clean(state, allow_dirty=False)
    require_clean(state, allow_dirty=True)  # told: allowed


def test_not_a_repository(tmp_path: Path) -> None:
    state = git_state(tmp_path)
    assert not state.is_repo and not state.clean
    with pytest.raises(DirtyTree, match="not a git checkout"):
        require_clean(state, allow_dirty=False)


def test_bench_run_refuses_a_dirty_tree_before_starting_anything(repo: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "server.py").write_text("x = 3\n")
    monkeypatch.setattr(cli, "REPO_ROOT", repo)
    out = tmp_path / "out"
    rc = cli.main(["run", "--scenario", "throughput", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "refused" in err and "server.py" in err and "--allow-dirty" in err
    assert not out.exists()  # nothing measured, nothing written


def test_run_info_says_when_a_run_is_partial(repo: Path) -> None:
    state = git_state(repo)
    full = run_info(state, scenarios=["a", "b"], default=["a", "b"], quick=False, allow_dirty=False, targets=[],
                    overrides=[], repeats=None, argv=[])
    assert full["complete"] and full["clean"] and full["id"].endswith(state.commit[:10])
    part = run_info(state, scenarios=["b"], default=["a", "b"], quick=False, allow_dirty=False, targets=["fanwire"],
                    overrides=["scale.conns=20000"], repeats=1, argv=[])
    assert not part["complete"]
    assert part["partial"] == ["only b", "only targets fanwire", "settings changed: scale.conns=20000",
                               "repeats set to 1"]


def test_a_busy_machine_is_flagged() -> None:
    assert busy_reasons(0.1, 2, 3.0, 0.0) == []
    assert busy_reasons(1.5, 2, 3.0, 0.0) == ["load average 1.50 on 2 cores"]
    assert busy_reasons(1.5, 2, 3.0, 0.0, check_load=False) == []
    assert "busy" in busy_reasons(None, 2, 60.0, 0.0)[0]
    assert "stolen" in busy_reasons(None, 2, 0.0, 12.0)[0]
    m = machine_state(0.05)
    assert set(m) >= {"loadavg", "busy_pct", "steal_pct", "busy", "why"}
