"""bench/ab.py: A/B of two dicomd versions, both servers up at once, alternating bursts, pairwise ratios."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import ab, servers  # not an installed package: importable through pytest's pythonpath


def test_lines_and_environment_variables_are_parsed_or_refused() -> None:
    assert ab.parse_lines("1x1, 10x4") == [(1, 1), (10, 4)]
    for bad in ("10", "0x4", "ax1", "10x"):
        with pytest.raises(ValueError, match="10x4"):
            ab.parse_lines(bad)
    assert ab.parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        ab.parse_env(["A"])


def test_the_report_gives_the_median_of_the_ratios_of_each_round() -> None:
    # the host slows down in round 2: both sides slow, the ratio of the round stays
    line = ab.LineResult(
        10,
        4,
        a=[1000.0, 500.0, 1000.0],
        b=[1200.0, 550.0, 1300.0],
        a_cpu_us=[600.0] * 3,
        b_cpu_us=[500.0] * 3,
    )
    assert line.ratios == pytest.approx([1.2, 1.1, 1.3])
    text = ab.render([line], "revision HEAD~1", "this checkout", 3, 600)
    assert "| batch 10, 4 conn | 1,000.0 | 1,200.0 | 1.200 (1.10-1.30) | 600 / 500 |" in text
    assert "(A: revision HEAD~1; B: this checkout)" in text


def test_nothing_to_compare_an_odd_round_count_or_an_unknown_base_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv, message in (
        (["--lines", "1x1"], "nothing to compare"),
        (["--env-b", "X=1", "--rounds", "3"], "--rounds an even number"),  # A would go first more often
        (["--base", "no-such-revision-here"], "no such commit"),
    ):
        with pytest.raises(SystemExit):
            ab.main(argv)
        assert message in capsys.readouterr().err


def test_two_servers_are_measured_and_their_data_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--lines", "1x1,2x2", "--count", "6", "--rounds", "2", "--settle", "0", "--warmup", "10"]
    code = ab.main([*args, "--workdir", str(tmp_path), "--env-b", "DICOMD_AB_TEST=1"])
    assert code == 0
    out = capsys.readouterr().out
    # (that B's processes get the variable is servers.start_dicomd's part: only the label is checked here)
    assert "(A: this checkout; B: this checkout DICOMD_AB_TEST=1)" in out
    for line in ("| batch 1, 1 conn |", "| batch 2, 2 conn |"):
        row = next(r for r in out.splitlines() if r.startswith(line))
        a_rate, b_rate = (float(cell.replace(",", "")) for cell in row.split("|")[2:4])
        assert a_rate > 0 and b_rate > 0
    assert list(tmp_path.iterdir()) == []  # both data dirs removed


def test_a_base_revision_runs_from_its_worktree_with_its_fast_path(tmp_path: Path) -> None:
    src = ab.worktree("HEAD", tmp_path)
    try:
        built = list((src / "dicomd" / "dicom").glob("_fastscan*.so"))
        assert built, "the worktree's C fast path was not built"
        here = servers.REPO / "src" / "dicomd" / "dicom"
        if (here / "_fastscan.c").read_bytes() == (src / "dicomd" / "dicom" / "_fastscan.c").read_bytes():
            assert built[0].read_bytes() == (here / built[0].name).read_bytes()  # the same source: copied
        # a different source is compiled there
        built[0].unlink()
        ab.build_fast_path(src.parent, reuse=False)
        assert built[0].exists()
        srv = servers.start_dicomd(str(tmp_path), env={"PYTHONPATH": str(src)})
        try:
            # the server's processes run the worktree's code: its fast path is the one they loaded
            maps = "".join(Path(f"/proc/{pid}/maps").read_text() for pid in srv.pids())
            assert str(built[0]) in maps
            assert str(servers.REPO / "src" / "dicomd" / "dicom") not in maps
        finally:
            srv.stop()
    finally:
        ab.remove_worktree(src)
    listed = subprocess.run(
        ["git", "-C", str(servers.REPO), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert str(src.parent) not in listed
    assert not src.parent.exists()
