"""bench/run.py's `--scale-load import`: each slice's rate and CPU per instance, the import's own (and its
parser processes'), so that growth of cost with the index size shows even on a host whose speed moves."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from bench import run, servers  # not an installed package: importable through pytest's pythonpath
from bench.corpus import Corpus, CorpusSpec


def test_each_slice_reports_its_time_and_the_cpu_of_the_import(tmp_path: Path) -> None:
    spec = CorpusSpec(name="scaletest", size="tiny", count=40, seed=9, series_per_study=1, per_series=10)
    srv = servers.start_dicomd(str(tmp_path))
    try:
        segments = run.bulk_import(srv, spec, 0, 40)
        ((first, last, seconds, user, system),) = segments
        assert (first, last) == (0, 40)
        assert seconds > 0
        # a real import and its parser processes: their interpreters' start-up alone is tens of ms of CPU
        assert 0.05 < user + system < 60 and user > 0 and system >= 0
        study = Corpus(spec).study(3).uid
        request = urllib.request.Request(
            f"{srv.base}/studies/{study}/instances", headers={"Accept": "application/dicom+json"}
        )
        with urllib.request.urlopen(request) as response:
            assert len(json.load(response)) == 10  # the import stored into the running server's archive
    finally:
        srv.stop()
