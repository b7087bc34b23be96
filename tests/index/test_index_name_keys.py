"""Person name search keys (study_name_key) and the date range probe: same results as the plain LIKE
matching, keys kept in step with the study rows (add, rename, delete, migration), plans that use them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select

from dicomd.index import Index, parse_qido
from dicomd.index import search as search_module
from dicomd.index.normalize import MAX_NAME_KEY, key_successor, name_keys
from dicomd.index.rows import study_name_keys
from dicomd.index.schema import study, study_name_key
from dicomd.index.search import _ESCAPE, bind, filter_terms
from dicomd.index.store import MIGRATIONS_DIR

from support.backends import BACKENDS, PG_URL
from support.index_rows import add, make_parsed, new, open_index, pn

LONG = "A" * 70 + "^LONGNAME"  # longer than MAX_NAME_KEY: stored truncated
# (patient name, referring physician name) of one study each
NAMES: list[tuple[str | dict[str, Any] | None, str | None]] = [
    ("Doe^John", "Smith^Anna"),
    ("Doe^Johnny", None),
    ("DOE^JANE^^DR", "Doe^John"),
    ("Doerr^Jon", "Müller^Hans"),
    ("Müller^Jérôme", "House^Gregory"),
    ("MULLER^Hans", "Wilson^James"),
    (pn("Yamada^Tarou", "山田^太郎", "やまだ^たろう"), "山田^花子"),
    (pn("", "山田^花子"), None),
    (pn("Hong^Gildong", "洪^吉洞", "홍^길동"), None),
    ("Smith-Jones^Mary Ann", "O'Brien^Seán"),
    ("O'Brien^Seán", None),
    ("García Márquez^Gabriel José", "García^Ana"),
    ("Zoë", None),
    ("UNDER_SCORE^100%!", "A%B^C_D"),
    (LONG, LONG),
    ("ﾔﾏﾀﾞ^ﾀﾛｳ", None),  # half-width katakana: folds to ヤマダ^タロウ
    ("Zed\U0010ffff^Max", None),
    (None, None),
    ("  Doe ^ John  ", None),
]

PATTERNS = [
    "D*", "DO*", "doe*", "DOE^J*", "doe^jo*", "Doe^John*", "DOE^JOHN", "doe^john", "DOE^JOHN^^", "Doe",
    "MÜL*", "mul*", "Mü*", "muller^jerome", "MÜLLER^JÉRÔME", "山*", "山田*", "山田^太郎", "やま*",
    "やまだ^たろう", "홍*", "홍^길동", "洪^*", "Smith-*", "O'B*", "o'brien^sean", "GARC*", "García M*",
    "garcia marquez^gabriel jose", "Zo*", "ZOE", "UNDER_*", "UNDER?SCORE*", "*100%!", "UNDER_SCORE^100%!",
    "A%*", "A" * 70 + "*", "A" * 64 + "*", "A" * 65 + "*", LONG, "ﾔﾏﾀﾞ*", "ヤマダ^タロウ", "Zed\U0010ffff*",
    "Zed\U0010ffff^Max", "D?E*", "?OE*", "*OHN", "*^J*", "D*^J*N", "DOE^J?HN", "Yamada*=山田*", "*=山田*",
    "*=山田^太郎", "Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada^Tarou=山田^太郎", "=山田^花子",
    "HONG*=洪*", "X*", "*", "Doe ^ John*",
]  # fmt: skip
FUZZY = [
    "jo", "doe", "john doe", "jer", "mül", "ohn", "tar", "太", "やま", "Doe^Jo", "doe mul", "gab jos",
    "a" * 70, "j*", "?", "洪 吉", "길", "max", "zed\U0010ffff", "ann mary",
]  # fmt: skip


def _study_uid(i: int) -> str:
    return f"1.9.{i}"


def _corpus(idx: Index) -> None:
    items = []
    for i, (patient, referring) in enumerate(NAMES):
        extra = {"00080090": pn(referring)} if referring else {}
        uid = _study_uid(i)
        items.append(make_parsed(uid, uid + ".1", uid + ".1.1", patient_name=patient, extra=extra))
    add(idx, *items)


@pytest.fixture(scope="module", params=BACKENDS)
def corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    with open_index(request.param, tmp_path_factory.mktemp("names")) as idx:
        _corpus(idx)
        yield idx


def _uids(idx: Index, level: Any, params: list[tuple[str, str]]) -> list[str]:
    tag = {"study": "0020000D", "series": "0020000E"}[level]
    return [r[tag]["Value"][0] for r in idx.search(parse_qido(level, params))]


def _reference(idx: Index, params: list[tuple[str, str]]) -> list[str]:
    """The studies the LIKE/= conditions alone select (the matching as it was before the name keys)."""
    q = parse_qido("study", params)
    conds = [study.c.partition_key == q.partition_key]
    for f in q.filters:
        for t in filter_terms(f, q.fuzzy, q.partition_key):
            if t.op in ("name=", "name^"):
                continue
            col = study.c[t.column]
            assert t.op in ("like", "=")
            conds.append(col.like(t.values[0], escape=_ESCAPE) if t.op == "like" else col == t.values[0])
    with idx.engine.connect() as conn:
        rows = conn.execute(select(study.c.study_instance_uid).where(*conds).order_by(study.c.study_key))
        return [r[0] for r in rows]


def _narrowed(params: list[tuple[str, str]]) -> bool:
    q = parse_qido("study", params)
    return any(t.op in ("name=", "name^") for f in q.filters for t in filter_terms(f, q.fuzzy, 1))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("keyword", ["PatientName", "ReferringPhysicianName"])
def test_wildcard_and_exact_match_like_the_plain_condition(corpus: Index, keyword: str, pattern: str) -> None:
    params = [(keyword, pattern)]
    assert _uids(corpus, "study", params) == _reference(corpus, params)
    # series level: the study condition through the join
    expected_series = [uid + ".1" for uid in _reference(corpus, params)]
    assert _uids(corpus, "series", params) == expected_series


@pytest.mark.parametrize("value", FUZZY)
@pytest.mark.parametrize("keyword", ["PatientName", "ReferringPhysicianName"])
def test_fuzzy_match_like_the_plain_condition(corpus: Index, keyword: str, value: str) -> None:
    params = [(keyword, value), ("fuzzymatching", "true")]
    assert _uids(corpus, "study", params) == _reference(corpus, params)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("PatientName", "doe*")], [0, 1, 2, 3, 18]),
        ([("PatientName", "DOE^JOHN")], [0, 18]),
        ([("PatientName", "Doe ^ John*")], []),  # query groups are not cleaned (as before)
        ([("PatientName", "mül*")], [4, 5]),
        ([("PatientName", "山田*")], [6, 7]),
        ([("PatientName", "*=山田*")], [6]),  # the second group of a multi-group name
        ([("PatientName", "=山田^花子")], [7]),
        ([("PatientName", "홍*")], [8]),
        ([("PatientName", "ﾔﾏﾀﾞ*")], [15]),
        ([("PatientName", "A" * 70 + "*")], [14]),  # longer than the stored key
        ([("PatientName", LONG)], [14]),
        ([("PatientName", "Zed\U0010ffff*")], [16]),
        ([("PatientName", "UNDER?SCORE*")], [13]),
        ([("PatientName", "*OHN")], [0, 18]),
        ([("ReferringPhysicianName", "doe*")], [2]),
        ([("ReferringPhysicianName", "山田*")], [6]),
        ([("PatientName", "jo"), ("fuzzymatching", "true")], [0, 1, 3, 11, 18]),
        ([("PatientName", "ann mary"), ("fuzzymatching", "true")], [9]),
        ([("PatientName", "やま"), ("fuzzymatching", "true")], [6]),
        ([("PatientName", "doe*"), ("ReferringPhysicianName", "mul*")], [3]),
    ],
)
def test_known_results(corpus: Index, params: list[tuple[str, str]], expected: list[int]) -> None:
    assert _uids(corpus, "study", params) == [_study_uid(i) for i in expected]


@pytest.mark.parametrize(
    ("value", "fuzzy", "narrowed"),
    [
        ("GAR*", False, True),
        ("G?R*", False, True),
        ("Doe^John", False, True),
        ("Yamada^Tarou=山田^太郎", False, True),
        ("*=山田*", False, True),
        ("gar", True, True),
        ("*GAR", False, False),  # no literal prefix: scans (documented)
        ("?AR*", False, False),
    ],
)
def test_which_patterns_use_the_keys(value: str, fuzzy: bool, narrowed: bool) -> None:
    params = [("PatientName", value), ("fuzzymatching", str(fuzzy).lower())]
    assert _narrowed(params) == narrowed


def test_prefix_plan_reads_the_key_range(tmp_path: Path) -> None:
    with open_index("sqlite", tmp_path) as idx:
        q = parse_qido("study", [("PatientName", "GAR*")])
        shape, _ = bind(q, True)
        sql = idx._statements.get(
            ("qido", shape), lambda: search_module.build_select(shape, idx._statements.dialect_name)
        )
        params = sql.params({f"p{i}": None for i in range(20)})
        plan = " | ".join(r[3] for r in idx._fetch("EXPLAIN QUERY PLAN " + sql.sql, params))
        assert "SEARCH study_name_key USING PRIMARY KEY" in plan, plan
        assert "SCAN study" not in plan, plan


# -- keys in step with the study rows ----------------------------------------------------------------


def _stored_keys(idx: Index) -> set[tuple[int, int, str, int]]:
    with idx.engine.connect() as conn:
        rows = conn.execute(select(study_name_key)).all()
    return {(r.partition_key, r.field, r.name_key, r.study_key) for r in rows}


def _expected_keys(idx: Index) -> set[tuple[int, int, str, int]]:
    """The keys recomputed from the study rows."""
    with idx.engine.connect() as conn:
        rows = conn.execute(select(study)).mappings().all()
    return {(r["partition_key"], f, v, r["study_key"]) for r in rows for f, v in study_name_keys(dict(r))}


def _check_keys(idx: Index) -> set[tuple[int, int, str, int]]:
    stored = _stored_keys(idx)
    assert stored == _expected_keys(idx)
    return stored


def test_corpus_keys_match_the_study_rows(corpus: Index) -> None:
    stored = _check_keys(corpus)
    assert all(len(k[2]) <= MAX_NAME_KEY for k in stored)
    assert any(k[2] == LONG[:MAX_NAME_KEY] for k in stored)


def _find(idx: Index, value: str, fuzzy: bool = False, keyword: str = "PatientName") -> list[str]:
    return _uids(idx, "study", [(keyword, value), ("fuzzymatching", str(fuzzy).lower())])


def test_a_later_instance_renames_the_study(index: Index) -> None:
    add(index, make_parsed("2.1", "2.1.1", "2.1.1.1", patient_name="Garcia^Lucas"))
    add(index, make_parsed("2.2", "2.2.1", "2.2.1.1", patient_name="Garcia^Maria"))
    _check_keys(index)
    # a later batch: the newest instance's name replaces the study's
    add(index, make_parsed("2.1", "2.1.1", "2.1.1.2", patient_name="Smith^Lucas"))
    assert _find(index, "GAR*") == ["2.2"]
    assert _find(index, "SMI*") == ["2.1"]
    assert _find(index, "lucas", fuzzy=True) == ["2.1"]
    assert _find(index, "garcia", fuzzy=True) == ["2.2"]
    _check_keys(index)
    # several instances of one study in one batch: the last one wins
    add(
        index,
        make_parsed("2.2", "2.2.2", "2.2.2.1", patient_name="Jones^Maria"),
        make_parsed("2.2", "2.2.2", "2.2.2.2", patient_name=pn("Yamada^Maria", "山田^真理")),
        make_parsed("2.3", "2.3.1", "2.3.1.1", patient_name="Jones^Bob"),
    )
    assert _find(index, "GAR*") == []
    assert _find(index, "JON*") == ["2.3"]
    assert _find(index, "山田*") == ["2.2"]
    _check_keys(index)
    # a name removed altogether
    add(index, make_parsed("2.3", "2.3.1", "2.3.1.2", patient_name=None))
    assert _find(index, "JON*") == []
    _check_keys(index)
    # replacing an instance (overwrite) with a renamed copy
    add(index, make_parsed("2.3", "2.3.1", "2.3.1.2", patient_name="Brown^Bob"), overwrite=True)
    assert _find(index, "BRO*") == ["2.3"]
    _check_keys(index)


def test_deletes_remove_the_keys_with_the_study(index: Index) -> None:
    add(
        index,
        make_parsed("3.1", "3.1.1", "3.1.1.1", patient_name="Garcia^Lucas"),
        make_parsed("3.1", "3.1.2", "3.1.2.1", patient_name="Garcia^Lucas"),
        make_parsed("3.2", "3.2.1", "3.2.1.1", patient_name="Garcia^Maria"),
    )
    assert index.delete(1, "3.1", "3.1.1") == 1  # one series of two: the study stays
    assert _find(index, "GAR*") == ["3.1", "3.2"]
    _check_keys(index)
    assert index.delete(1, "3.1", "3.1.2", "3.1.2.1") == 1  # its last instance: the study goes
    assert _find(index, "GAR*") == ["3.2"]
    _check_keys(index)
    assert index.delete(1, "3.2") == 1
    assert _find(index, "GAR*") == [] and _find(index, "maria", fuzzy=True) == []
    assert _stored_keys(index) == set()
    # the same study stored again gets its keys again
    add(index, make_parsed("3.2", "3.2.1", "3.2.1.1", patient_name="Garcia^Maria"))
    assert _find(index, "GAR*") == ["3.2"]
    _check_keys(index)


def test_partitions_have_their_own_keys(index: Index) -> None:
    other = index.ensure_partition("other")
    index.add_instances(
        [new(make_parsed("4.1", "4.1.1", "4.1.1.1", patient_name="Garcia^Lucas"))], overwrite=False
    )
    index.add_instances(
        [new(make_parsed("4.2", "4.2.1", "4.2.1.1", patient_name="Garcia^Luis"), partition_key=other)],
        overwrite=False,
    )
    found = [r["0020000D"]["Value"][0] for r in index.search(parse_qido("study", [("PatientName", "GAR*")]))]
    assert found == ["4.1"]
    q = parse_qido("study", [("PatientName", "GAR*")], partition_key=other)
    assert [r["0020000D"]["Value"][0] for r in index.search(q)] == ["4.2"]
    _check_keys(index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_builds_the_keys_of_existing_studies(backend: str, tmp_path: Path) -> None:
    with open_index(backend, tmp_path) as idx:
        _corpus(idx)
        before = _check_keys(idx)
        assert before
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with idx.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")  # drops study_name_key: an index written before it existed
        idx.engine.dispose()
        idx.migrate()
        assert _stored_keys(idx) == before
        assert _find(idx, "mül*") == [_study_uid(4), _study_uid(5)]


# -- unit ---------------------------------------------------------------------------------------------


def test_name_keys_and_successor() -> None:
    assert name_keys("=DOE^JOHN=山田^太郎=", " DOE JOHN 山田 太郎 ") == (
        {"DOE^JOHN", "山田^太郎"},
        {"DOE", "JOHN", "山田", "太郎"},
    )
    assert name_keys(None, None) == (set(), set())
    assert name_keys("=" + "X" * 100 + "=", None) == ({"X" * MAX_NAME_KEY}, set())
    assert key_successor("GAR") == "GAS"
    assert key_successor("MÜL") == "MÜM"
    assert key_successor("A\U0010ffff") == "B"
    assert key_successor("\U0010ffff") is None
    assert key_successor("A\ud7ff") == "A\ue000"
    assert key_successor("") is None
    # every string starting with the prefix sorts in [prefix, successor) by UTF-8 bytes
    for prefix in ("GAR", "MÜL", "山田", "A\ud7ff", "Z\U0010ffff"):
        high = key_successor(prefix)
        assert high is not None
        for tail in ("", "A", "\U0010ffff", "\x00", "山"):
            s = (prefix + tail).encode("utf-8", "surrogatepass")
            assert prefix.encode("utf-8", "surrogatepass") <= s < high.encode("utf-8", "surrogatepass")


# -- date ranges: the probe keeps wide ranges off the index, with the same results ------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_date_ranges_same_results_on_and_off_the_index(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_index(backend, tmp_path) as idx:
        items = []
        for i in range(60):
            uid = f"5.{i}"
            date = f"20{10 + i % 12:02d}{1 + i % 12:02d}{1 + i % 28:02d}"
            items.append(make_parsed(uid, uid + ".1", uid + ".1.1", study_date=date, patient_name=f"P{i}^X"))
        add(idx, *items)
        queries: list[tuple[Any, list[tuple[str, str]]]] = [
            ("study", [("StudyDate", "2010-2015")]),
            ("study", [("StudyDate", "20120101-")]),
            ("study", [("StudyDate", "-20111231")]),
            ("study", [("StudyDate", "2013")]),
            ("study", [("StudyDate", "20100101-20251231"), ("limit", "7"), ("offset", "5")]),
            ("study", [("StudyDate", "2010-2025"), ("PatientName", "P1*")]),
            ("study", [("PatientBirthDate", "1900-2000")]),
            ("series", [("StudyDate", "2011-2014")]),
            ("series", [("PerformedProcedureStepStartDate", "1900-2100")]),
            ("instance", [("StudyDate", "2012-2016"), ("limit", "10")]),
        ]
        results: dict[tuple[str, str], list[list[str]]] = {}
        for factor in (10**6, 0):  # index always / never (on SQLite; PostgreSQL plans by itself)
            monkeypatch.setattr(search_module, "PROBE_FACTOR", factor)
            for level, params in queries:
                tag = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]
                found = [r[tag]["Value"][0] for r in idx.search(parse_qido(level, params))]
                results.setdefault((level, str(params)), []).append(found)
        for key, (on_index, off_index) in results.items():
            assert on_index == off_index, key
        assert results[("study", str([("StudyDate", "2013")]))][0] == [
            f"5.{i}" for i in range(60) if i % 12 == 3
        ]


def test_wide_range_is_kept_off_the_index_on_sqlite(tmp_path: Path) -> None:
    with open_index("sqlite", tmp_path) as idx:
        add(
            idx,
            *(
                make_parsed(f"6.{i}", f"6.{i}.1", f"6.{i}.1.1", study_date=f"2020010{1 + i}")
                for i in range(5)
            ),
        )
        seen: list[str] = []
        fetch = idx._fetch

        def spy(sql: str, params: Any) -> list[Any]:
            seen.append(sql)
            return fetch(sql, params)

        idx._fetch = spy  # type: ignore[method-assign]
        narrow = parse_qido("study", [("StudyDate", "20200101-20200102"), ("limit", "1")])
        assert len(idx.search(narrow)) == 1
        assert "(+ study.study_date)" not in seen[-1]
        wide = parse_qido("study", [("StudyDate", "2020"), ("limit", "1")])
        idx.search(wide)  # 5 matches < PROBE_FACTOR (20) x 1: on the index
        assert "(+ study.study_date)" not in seen[-1]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(search_module, "PROBE_FACTOR", 2)  # 5 matches >= 2 x 1: wide
            assert [r["0020000D"]["Value"][0] for r in idx.search(wide)] == ["6.0"]
            assert "(+ study.study_date) >= ?" in seen[-1] and "(+ study.study_date) <= ?" in seen[-1]
            assert seen[-2].startswith("SELECT count(*)")


# -- PostgreSQL: a name narrowing that names many studies is dropped, with the same results ---------------


def test_every_name_matches_alike_without_its_narrowing(
    corpus: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROBE_FACTOR 0 makes every name's key range "wide": on PostgreSQL the study_name_key narrowing is
    dropped and the LIKE/= conditions alone select (SQLite never probes names)."""
    monkeypatch.setattr(search_module, "PROBE_FACTOR", 0)
    for keyword in ("PatientName", "ReferringPhysicianName"):
        for params in [[(keyword, p)] for p in PATTERNS] + [
            [(keyword, v), ("fuzzymatching", "true")] for v in FUZZY
        ]:
            assert _uids(corpus, "study", params) == _reference(corpus, params), params


def test_a_name_shared_by_many_studies_is_searched_in_key_order_on_postgresql(tmp_path: Path) -> None:
    if not PG_URL:
        pytest.skip("DICOMD_TEST_POSTGRES_URL not set")
    with open_index("postgresql", tmp_path) as idx:
        add(
            idx,
            *(make_parsed(f"7.{i}", f"7.{i}.1", f"7.{i}.1.1", patient_name=f"SMITH^P{i}") for i in range(30)),
        )
        add(idx, make_parsed("7.99", "7.99.1", "7.99.1.1", patient_name="RARE^ONE"))
        seen: list[str] = []
        fetch = idx._fetch

        def spy(sql: str, params: Any) -> list[Any]:
            seen.append(sql)
            return fetch(sql, params)

        idx._fetch = spy  # type: ignore[method-assign]
        # 30 keys >= PROBE_FACTOR (20) x (limit 1 + offset 0): the narrowing is dropped
        common = parse_qido("study", [("PatientName", "SMI*"), ("limit", "1")])
        assert [r["0020000D"]["Value"][0] for r in idx.search(common)] == ["7.0"]
        assert "study_name_key" in seen[-2] and "count(" in seen[-2]  # the probe
        assert "study_name_key" not in seen[-1]
        rare = parse_qido("study", [("PatientName", "RAR*"), ("limit", "1")])
        assert [r["0020000D"]["Value"][0] for r in idx.search(rare)] == ["7.99"]
        assert "study_name_key" in seen[-1]  # 1 key: narrowed
        exact = parse_qido("study", [("PatientName", "SMITH^P3")])
        assert [r["0020000D"]["Value"][0] for r in idx.search(exact)] == ["7.3"]
        assert "study_name_key" in seen[-1]
