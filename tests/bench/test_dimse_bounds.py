"""bench/dimse.py: the bounds of the machine under the DIMSE table, from the client's own ceiling (storescu
into a receiver that stores nothing) and the device flush rate measured in the same run."""

from __future__ import annotations

from pathlib import Path

from bench import dimse  # not an installed package: importable through pytest's pythonpath


def test_one_association_bound_is_the_client_and_one_flush_per_instance() -> None:
    null = dimse.Figures({"store1": 2000.0, "store4": 2100.0})
    orthanc = dimse.Figures({"store1": 290.0, "store4": 530.0})
    text = dimse.render_bounds(null, 680.0, orthanc)
    # 1 / (1/2000 + 1/680) = 507.5: one instance costs the client 0.5 ms and the flush 1.47 ms
    assert "= 507 instances/s, whatever its CPU; 3x Orthanc is 870 (beyond that bound)" in text
    assert "2,000.0 instances/s over one association, 2,100.0 over four" in text
    assert "680/s, 1.47 ms each" in text
    assert "over four associations 3x Orthanc is 1,590 instances/s, 76% of the client's own ceiling" in text


def test_a_target_within_the_bound_says_so() -> None:
    null = dimse.Figures({"store1": 2000.0, "store4": 2100.0})
    text = dimse.render_bounds(null, 3500.0, dimse.Figures({"store1": 200.0}))
    assert "= 1,273 instances/s, whatever its CPU; 3x Orthanc is 600 (within that bound)" in text
    assert "over four associations" not in text  # no Orthanc x4 figure in this run


def test_without_orthanc_or_flush_probe_only_what_was_measured() -> None:
    text = dimse.render_bounds(dimse.Figures({"store1": 1500.0, "store4": 1600.0}), None, None)
    assert "1,500.0 instances/s over one association" in text
    assert "flush" not in text and "Orthanc" not in text
    assert dimse.render_bounds(dimse.Figures(), None, None) == ""


def test_the_null_receiver_takes_instances_and_keeps_none(tmp_path: Path) -> None:
    """DCMTK's storescu into it succeeds (each figure is a real C-STORE rate: storescu fails the line
    on any failed store) and nothing is written."""
    one = dimse.Corpus(dimse.CorpusSpec(name="bounds1", size="tiny", count=8, seed=5))
    four = dimse.Corpus(dimse.CorpusSpec(name="bounds4", size="tiny", count=8, seed=6))
    files = tmp_path / "corpus"
    dimse.write_corpus(one, files / "one", 1)
    dimse.write_corpus(four, files / "four", 4)
    work = tmp_path / "work"
    work.mkdir()
    figures = dimse.run_null_receiver(str(work), (one, four), files)
    assert figures.values["store1"] > 0 and figures.values["store4"] > 0
    assert [p for p in work.rglob("*") if p.is_file()] == []
