"""bench/ack_paths.py: the same group commits through three flush designs, on the real disk and index."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ack_paths
from bench.corpus import Corpus, CorpusSpec


@pytest.mark.parametrize("mode", ack_paths.MODES)
def test_each_path_stores_and_indexes_the_batch(tmp_path: Path, mode: str) -> None:
    corpus = Corpus(CorpusSpec(size="ct128", count=30))
    scratch = tmp_path / "prepare"
    scratch.mkdir()
    ready = ack_paths.prepare(corpus, 0, 3, str(scratch))
    assert list(scratch.iterdir()) == []  # the metadata objects were taken along, nothing left behind
    data_dir = ack_paths.DataDir(mode, tmp_path / mode)
    try:
        data_dir.commit(ready)
        for item in ready:
            assert data_dir.index.has_object(item.key)
            assert data_dir.store.path(item.key).read_bytes() == item.data
            assert data_dir.store.read(item.key, "json") == item.metadata
        assert data_dir.store.staged_names() == []
        if mode == "journal":
            ring = (tmp_path / mode / "ring").read_bytes()
            assert ring.startswith(ready[0].data + ready[0].metadata + ready[1].data)
            assert len(ring) == ack_paths.RING_BYTES
            assert data_dir.offset == sum(len(item.data) + len(item.metadata) for item in ready)
    finally:
        data_dir.close()


def test_a_run_measures_every_mode_alike_and_leaves_nothing(tmp_path: Path) -> None:
    results = ack_paths.run(tmp_path, batch=2, commits=6, rounds=3, settle=0)
    assert [r.mode for r in results] == list(ack_paths.MODES)
    for result in results:
        assert len(result.waits) == 6 and result.instances == 12
        assert all(wait > 0 for wait in result.waits) and result.cpu > 0
    text = ack_paths.render(results, 2, 3)
    assert "batch 2" in text and "12 instances per mode in 3 alternating rounds" in text
    assert sum(line.startswith(f"| {mode} |") for line in text.splitlines() for mode in ack_paths.MODES) == 3
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="fewer commits than rounds"):
        ack_paths.run(tmp_path, batch=1, commits=2, rounds=3, settle=0)
