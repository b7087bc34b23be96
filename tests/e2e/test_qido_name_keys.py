"""QIDO by person name through the running server: prefix, exact and fuzzy matching narrowed by the name
keys, a study renamed by a later instance, a deleted study, paging over a prefix.

Every name starts with a token of this test run, so data other tests store never matches.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow, unique_id, value


def _store(client: httpx.Client, study: str, name: str, patient_id: str, **attrs: Any) -> None:
    r = stow(client, [make_instance(study=study, patient_id=patient_id, patient_name=name, **attrs)])
    assert r.status_code == 200, r.text


def _studies(client: httpx.Client, **params: str) -> list[str]:
    r = client.get("/studies", params=params)
    assert r.status_code == 200, r.text
    return [value(s, "0020000D") for s in r.json()]


def test_name_matching_follows_renames_and_deletes(client: httpx.Client) -> None:
    tok = "Q" + uuid.uuid4().hex[:10].upper()
    pid = unique_id("NK")
    uids = {label: new_uid() for label in ("muller", "muster", "yamada", "smith")}
    _store(client, uids["muller"], f"{tok}Müller^Jürgen", pid)
    _store(client, uids["muster"], f"{tok}MUSTER^Max", pid)
    _store(client, uids["yamada"], f"{tok}Yamada^Tarou=山田^太郎=やまだ^たろう", pid)
    _store(client, uids["smith"], f"{tok}SMITH^Anna", pid, ReferringPhysicianName=f"{tok}Müller^Hans")

    def ordered(*labels: str) -> list[str]:
        return sorted((uids[label] for label in labels), key=lambda u: all_in_order.index(u))

    all_in_order = _studies(client, PatientName=f"{tok}*")
    assert sorted(all_in_order) == sorted(uids.values())
    assert _studies(client, PatientName=f"{tok}MÜL*") == ordered("muller")  # accented prefix, URL-encoded
    assert _studies(client, PatientName=f"{tok.lower()}mü*") == ordered("muller", "muster")  # accents fold
    assert _studies(client, PatientName=f"{tok}M?STER*") == ordered("muster")
    assert _studies(client, PatientName=f"{tok.lower()}müller^jürgen") == ordered("muller")
    assert _studies(client, PatientName=f"{tok}MULLER^JURGEN") == ordered("muller")
    assert _studies(client, PatientName="山田^太郎", PatientID=pid) == ordered("yamada")
    assert _studies(client, PatientName="*=山田*", PatientID=pid) == ordered("yamada")
    assert _studies(client, PatientName="やま", fuzzymatching="true", PatientID=pid) == ordered("yamada")
    assert _studies(client, PatientName=f"jürg {tok}", fuzzymatching="true") == ordered("muller")
    assert _studies(client, ReferringPhysicianName=f"{tok}MUL*") == ordered("smith")
    # paging over a prefix: stable, by key
    pages = [_studies(client, PatientName=f"{tok}*", limit="1", offset=str(i)) for i in range(5)]
    assert [p[0] for p in pages if p] == all_in_order and pages[4] == []

    # a later instance of the study renames it
    _store(client, uids["muller"], f"{tok}Schmidt^Eva", pid)
    assert _studies(client, PatientName=f"{tok}MÜL*") == []
    assert _studies(client, PatientName=f"{tok}MU*") == ordered("muster")
    assert _studies(client, PatientName=f"{tok}SCH*") == ordered("muller")
    assert _studies(client, PatientName=f"jürg {tok}", fuzzymatching="true") == []
    assert _studies(client, PatientName=f"eva {tok}", fuzzymatching="true") == ordered("muller")

    # a deleted study is found no more
    assert client.delete(f"/studies/{uids['muller']}").status_code == 204
    assert _studies(client, PatientName=f"{tok}SCH*") == []
    assert _studies(client, PatientName=f"{tok}*") == ordered("muster", "yamada", "smith")
