"""Hostile query strings and path segments against every route of the real server (issue 9, finding 7):
never a 5xx, and every 4xx is a JSON error body. Known findings first (each was a 500 on SQLite or
PostgreSQL, or an accepted malformed value), then Hypothesis throws generated requests at the shared
server (SQLite and, when configured, PostgreSQL)."""

from __future__ import annotations

import string
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from dicomd.api.routes import dicomweb_routes
from dicomd.dicom.uids import is_valid_uid
from dicomd.index.qido import SEARCHABLE

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow, unique_id
from support.server import Server

# CI profile: the same examples on every run (derandomize), none written into the repository
# (database=None); the examples are bounded so that the file runs in a few seconds per backend
CI = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HUGE = "9" * 5000  # int() refuses more than 4,300 digits
SUPERSCRIPT_TWO = "\u00b2"  # str.isdigit() is true, int() refuses it
FULLWIDTH_ONE = "\uff11"  # \d and int() take it
LIST_KEYS = [s.keyword for s in SEARCHABLE.values() if s.kind in ("uid", "cs", "modalities")]
_LEVEL_PATH = {"study": "/studies", "series": "/series", "instance": "/instances"}
_KEY_PATH = {s.keyword: _LEVEL_PATH[s.level] for s in SEARCHABLE.values()}
MAX_QUERY = 60_000  # characters of a generated query string
# DELETE only ever names UIDs under this root, which nothing else stores
_NOBODY_ROOT = "1.3.6.1.4.1.99999.404."


@dataclass(frozen=True)
class Seeded:
    patient: str
    study: str
    series: str
    sop: str
    odd_study: str  # a UID STOW stores with a warning (empty component)
    odd_series: str
    odd_sop: str

    @property
    def uids(self) -> list[str]:
        return [self.study, self.series, self.sop, self.odd_study, self.odd_series, self.odd_sop]


@pytest.fixture(scope="module")
def seeded(server: Server) -> Seeded:
    """Two stored instances, so that searches and retrieves touch real rows."""
    patient = unique_id("PROP")
    study, series, sop = new_uid(), new_uid(), new_uid()
    odd_study = new_uid()[:50] + "..7"
    odd_series, odd_sop = odd_study + ".1", odd_study + ".1.1"
    with warnings.catch_warnings():  # pydicom warns about the odd UIDs it is told to write
        warnings.simplefilter("ignore")
        parts = [
            make_instance(study=study, series=series, sop=sop, patient_id=patient, patient_name="Prop^Erty"),
            make_instance(study=odd_study, series=odd_series, sop=odd_sop, patient_id=patient, modality="MR"),
        ]
    with httpx.Client(base_url=server.v2, timeout=30) as c:
        r = stow(c, parts)
    assert r.status_code in (200, 202), r.text
    return Seeded(patient, study, series, sop, odd_study, odd_series, odd_sop)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as c:
        yield c


def _log_tail(server: Server, chars: int = 6000) -> str:
    return server.log()[-chars:]


def check(server: Server, response: httpx.Response) -> None:
    """No 5xx; a 4xx is {"status": .., "message": ..} as JSON."""
    request = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, f"{request} -> {response.status_code}\n{_log_tail(server)}"
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), request
        body = response.json()
        assert body["status"] == response.status_code and body["message"], (request, body)


def _query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


# -- the findings, one request each ----------------------------------------------------------------

_QIDO_CASES: list[tuple[str, str, str]] = [
    *((_KEY_PATH[k], k, sep) for k in LIST_KEYS for sep in (",", "\\", " , \\ ")),
    *(("/instances", k, v) for k in ("limit", "offset") for v in (SUPERSCRIPT_TWO, FULLWIDTH_ONE, HUGE)),
    ("/studies", "offset", str(10**30)),
    ("/series", "SeriesNumber", "9999999999"),  # PostgreSQL: integer out of range
    ("/instances", "InstanceNumber", FULLWIDTH_ONE),
    ("/studies", "StudyDate", "\uff12\uff10\uff12\uff10"),  # full-width 2020
    ("/studies", "PatientName", "Doe\x00*"),  # PostgreSQL: NUL in a text parameter
    ("/studies", "PatientID", "\x00"),
    ("/series", "Modality", "C\x00T"),
    ("/studies", "PatientID", "*" + "B" * 55_000),  # SQLite: LIKE pattern too complex
    ("/studies", "PatientName", "*" + "B" * 55_000),
]
_FUZZY = ("fuzzymatching", "true")


@pytest.mark.parametrize(
    ("path", "key", "value", "more"),
    [
        *((path, key, value, []) for path, key, value in _QIDO_CASES),
        # SQLite: one LIKE per word, "Expression tree is too large (maximum depth 1000)"
        ("/studies", "PatientName", " ".join(f"w{i}" for i in range(1000)), [_FUZZY]),
    ],
)
def test_bad_qido_value_is_400_naming_it(
    server: Server, http: httpx.Client, path: str, key: str, value: str, more: list[tuple[str, str]]
) -> None:
    r = http.get(f"{server.v2}{path}?{_query([(key, value), *more])}")
    check(server, r)
    assert r.status_code == 400 and key in r.json()["message"], r.text


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("key", ["offset", "limit"])
@pytest.mark.parametrize("value", [SUPERSCRIPT_TWO, FULLWIDTH_ONE, "\u0663", HUGE, str(10**30), "-" + HUGE])
def test_bad_changefeed_number_is_400_naming_it(
    server: Server, http: httpx.Client, version: str, key: str, value: str
) -> None:
    r = http.get(f"{server.url}/{version}/changefeed?{_query([(key, value)])}")
    check(server, r)
    assert r.status_code == 400 and key in r.json()["message"], r.text


def test_uid_stored_with_a_warning_is_searchable(server: Server, http: httpx.Client, seeded: Seeded) -> None:
    # STOW and QIDO share one UID rule: QIDO refused "..", which STOW stores
    for path, key, uid in [
        ("/studies", "StudyInstanceUID", seeded.odd_study),
        ("/series", "SeriesInstanceUID", seeded.odd_series),
        ("/instances", "SOPInstanceUID", seeded.odd_sop),
    ]:
        r = http.get(f"{server.v2}{path}", params={key: f"{uid},{seeded.study}", "PatientID": seeded.patient})
        assert r.status_code == 200, r.text
        assert len(r.json()) == (2 if path == "/studies" else 1), r.json()
    r = http.get(f"{server.v2}/studies/{seeded.odd_study}/series/{seeded.odd_series}/instances")
    assert r.status_code == 200 and len(r.json()) == 1, r.text


@pytest.mark.parametrize("version", ["v0", "v3", "v" + "9" * 40, "v" + HUGE, "v" + FULLWIDTH_ONE, "v-1", "v"])
def test_version_segment_is_never_a_5xx(server: Server, http: httpx.Client, version: str) -> None:
    # "v" + 5,000 digits: Starlette's int convertor calls int(), which refuses more than 4,300 digits
    for path in ("/studies", "/changefeed", "/studies/1.2/series"):
        r = http.get(f"{server.url}/{quote(version)}{path}")
        check(server, r)
        assert r.status_code == 404, (version, path, r.text)


def test_fuzzy_search_of_a_word_that_folds_into_many(
    server: Server, http: httpx.Client, seeded: Seeded
) -> None:
    # U+FDFA folds into 4 words: 1,000 of them were 4,000 LIKEs (SQLite: expression tree too large)
    r = http.get(f"{server.v2}/studies", params={"PatientName": "\ufdfa" * 1000, "fuzzymatching": "true"})
    assert (r.status_code, r.json()) == (200, []), r.text


# -- generated requests --------------------------------------------------------------------------

_DIGITS_OF_OTHER_SCRIPTS = "".join(chr(z + d) for z in (0x0660, 0x07C0, 0x0966, 0xFF10) for d in range(10))
_SEPARATORS = "\\,*?-^=% _!.:"
_QIDO_KEYS = sorted(
    {s.keyword for s in SEARCHABLE.values()}
    | set(SEARCHABLE)
    | {t.lower() for t in SEARCHABLE}
    | {"limit", "offset", "fuzzymatching", "includefield", "Limit", "PatientNam", "Rows", "00280010"}
)
_FEED_KEYS = ["offset", "limit", "includemetadata", "startTime", "endTime", "STARTTIME", "includeMetadata"]

_digits = st.text(alphabet=string.digits, min_size=1, max_size=24)
_dates = st.one_of(
    st.dates().map(lambda d: d.strftime("%Y%m%d")), _digits, st.sampled_from(["2020", "202001", ""])
)
_times = st.one_of(
    st.times().map(lambda t: t.strftime("%H%M%S.%f")), _digits, st.sampled_from(["10", "1030", "10:30", ""])
)
_numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.sampled_from([HUGE, "-" + HUGE, "0" * 5000 + "1", "+1", " 1", "1 ", "1_0", "1e3", "0x10"]),
    st.text(alphabet=_DIGITS_OF_OTHER_SCRIPTS + SUPERSCRIPT_TWO, min_size=1, max_size=12),
)
_uids = st.one_of(
    st.from_regex(r"[0-9][0-9.]{0,63}", fullmatch=True),
    st.sampled_from(["1..2", "1.", "0", "1" * 64, "1" * 65, ".1", "1.2.abc"]),
)


_separators_only = st.text(alphabet="\\, ", min_size=1, max_size=6)
_datetimes = st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda d: d.isoformat())
_KIND = {s.keyword: s.kind for s in SEARCHABLE.values()} | {t: s.kind for t, s in SEARCHABLE.items()}


def _values(stored: list[str]) -> st.SearchStrategy[str | bytes]:
    """Values of any kind, for any key (bytes are sent percent-encoded and need not be UTF-8)."""
    return st.one_of(
        st.binary(max_size=12),
        st.text(max_size=40),
        st.text(alphabet=_SEPARATORS, max_size=12),
        st.text(alphabet=string.ascii_letters + "*?^=", max_size=16),  # names, wildcards
        _numbers,
        _dates,
        st.tuples(_dates, _dates).map("-".join),  # ranges
        _times,
        st.tuples(_times, _times).map("-".join),
        _uids,
        st.lists(st.one_of(_uids, st.sampled_from(stored)), max_size=6).map(",".join),
        st.sampled_from(stored),
        _datetimes,
        st.sampled_from(["true", "false", "TRUE", "all", "", "*", "\x00", "a\x00*", "\uffff", "\U0010ffff"]),
        st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=8),  # control characters
        st.integers(min_value=100, max_value=20_000).map(lambda n: "A" * n),  # very long
    )


def _lists(items: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Lists with any separators, empty items included."""
    return st.lists(st.tuples(st.one_of(items, st.just("")), st.sampled_from(["\\", ",", " , "]))).map(
        lambda pairs: "".join(item + sep for item, sep in pairs)
    )


def _values_for(key: str, stored: list[str]) -> st.SearchStrategy[str | bytes]:
    """Values aimed at what a key takes (so that each kind's parser is reached often), or any value."""
    names = st.text(alphabet=string.ascii_letters + "*?^= \ufdfa\u00e9", max_size=30)
    aimed: dict[str, st.SearchStrategy[str]] = {
        "uid": st.one_of(_uids, _lists(st.one_of(_uids, st.sampled_from(stored))), _separators_only),
        "cs": st.one_of(_lists(st.sampled_from(["CT", "MR", "M*", "", "O"])), _separators_only),
        "modalities": st.one_of(_lists(st.sampled_from(["CT", "MR", "C?", ""])), _separators_only),
        "int": _numbers,
        "date": st.one_of(_dates, st.tuples(_dates, _dates).map("-".join)),
        "time": st.one_of(_times, st.tuples(_times, _times).map("-".join)),
        "pn": st.one_of(names, st.lists(names, max_size=80).map(" ".join)),
        # up to far beyond MAX_VALUE_LENGTH: a pattern without a literal prefix is a LIKE on every row
        "str": st.one_of(
            names, st.integers(min_value=900, max_value=MAX_QUERY - 100).map(lambda n: "*" + "B" * n)
        ),
    }
    by_param = {
        "limit": _numbers,
        "offset": _numbers,
        "fuzzymatching": st.sampled_from(["true", "false", "TRUE", " true", "1", ""]),
        "includemetadata": st.sampled_from(["true", "false", "False", "yes", ""]),
        "includefield": st.lists(st.one_of(st.sampled_from(_QIDO_KEYS), st.text(max_size=10))).map(",".join),
        "starttime": _datetimes,
        "endtime": _datetimes,
    }
    kind = _KIND.get(key)
    specific = aimed[kind] if kind else by_param.get(key.lower())
    generic = _values(stored)
    return st.one_of(specific, generic) if specific is not None else generic


def _percent(data: bytes) -> str:
    return "".join(f"%{b:02X}" for b in data)


def _query_strings(keys: list[str], stored: list[str]) -> st.SearchStrategy[str]:
    """Known keys with values aimed at them or any, and random keys (text or bytes). One invalid pair
    makes the whole request a 400 before any SQL, so single pairs and short lists come first."""
    known = st.sampled_from(keys).flatmap(lambda k: st.tuples(st.just(k), _values_for(k, stored)))
    random_key = st.tuples(st.one_of(st.text(max_size=12), st.binary(max_size=8)), _values(stored))
    pairs = st.one_of(
        known.map(lambda pair: [pair]),
        st.lists(known, max_size=3),
        st.lists(st.one_of(known, random_key), max_size=5),
    )
    # within what a request line may hold (about 64 KiB: longer ones are the HTTP layer's plain 400)
    return pairs.map(
        lambda pairs: "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    ).filter(lambda query: len(query) <= MAX_QUERY)


def _segments(stored: list[str]) -> st.SearchStrategy[str]:
    """Path segments, already percent-encoded."""
    return st.one_of(
        st.sampled_from(stored),
        _uids.map(lambda u: quote(u, safe="")),
        st.text(min_size=1, max_size=30).map(lambda t: quote(t, safe="")),
        st.sampled_from(["1" * 65, "1" * 1000, HUGE, "%00", "%2F", "%FF%FE", "..", ".", "%2E%2E", "1%00"]),
        st.binary(min_size=1, max_size=12).map(_percent),
        st.text(alphabet=_DIGITS_OF_OTHER_SCRIPTS, min_size=1, max_size=8).map(lambda t: quote(t, safe="")),
    )


def _nobody_segments() -> st.SearchStrategy[str]:
    """Path segments for DELETE: UIDs nothing stores, or not UIDs at all."""
    return st.one_of(
        st.from_regex(r"[0-9]{1,20}", fullmatch=True).map(lambda d: _NOBODY_ROOT + d),
        st.text(min_size=1, max_size=30)
        .filter(lambda t: not is_valid_uid(t))
        .map(lambda t: quote(t, safe="")),
        st.sampled_from(["1" * 65, HUGE, "%00", "%FF", "1.%00", _NOBODY_ROOT + "%00"]),
    )


def _frame_lists() -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(st.integers(min_value=-3, max_value=5).map(str), min_size=1, max_size=4).map(",".join),
        st.text(alphabet=string.digits + ",-+ ", max_size=12).map(lambda t: quote(t, safe=",")),
        _numbers.map(lambda t: quote(t, safe="")),
        st.sampled_from(["1", "1,1", HUGE, "1," + HUGE, "%00"]),
    )


def _bulk_paths() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["7FE00010", "00081140/0/00081155", "7fe00010", "7FE00010/", "..", "%2F", "0/0/0"]),
        st.lists(
            st.one_of(st.from_regex(r"[0-9A-Fa-f]{8}", fullmatch=True), _digits, st.text(max_size=8)),
            min_size=1,
            max_size=4,
        ).map(lambda parts: "/".join(quote(p, safe="") for p in parts)),
    )


def _get_templates() -> list[str]:
    paths = [r.path for r in dicomweb_routes() if isinstance(r, Route) and "GET" in (r.methods or ())]
    assert "/changefeed" in paths and "/studies/{study}/series/{series}/instances/{instance}" in paths
    return paths


def _delete_templates() -> list[str]:
    return [r.path for r in dicomweb_routes() if isinstance(r, Route) and "DELETE" in (r.methods or ())]


def _fill(template: str, values: Callable[[str], str]) -> str:
    """The template with each {name} (or {name:path}) replaced by values(name)."""
    out, rest = "", template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        name, _, rest = tail.partition("}")
        out += head + values(name.split(":")[0])
    return out + rest


@CI
@given(data=st.data())
def test_qido_never_fails(server: Server, http: httpx.Client, seeded: Seeded, data: st.DataObject) -> None:
    version = data.draw(st.sampled_from(["v1", "v2"]))
    template = data.draw(
        st.sampled_from([t for t in _get_templates() if t.endswith(("/studies", "/series", "/instances"))])
    )
    path = _fill(template, lambda name: data.draw(_segments(seeded.uids)))
    query = data.draw(_query_strings(_QIDO_KEYS, seeded.uids))
    check(server, http.get(f"{server.url}/{version}{path}?{query}"))


@CI
@given(data=st.data())
def test_changefeed_never_fails(
    server: Server, http: httpx.Client, seeded: Seeded, data: st.DataObject
) -> None:
    version = data.draw(st.sampled_from(["v1", "v2"]))
    path = data.draw(st.sampled_from(["/changefeed", "/changefeed/latest"]))
    query = data.draw(_query_strings(_FEED_KEYS, seeded.uids))
    check(server, http.get(f"{server.url}/{version}{path}?{query}"))


@CI
@given(data=st.data())
def test_any_route_never_fails(
    server: Server, http: httpx.Client, seeded: Seeded, data: st.DataObject
) -> None:
    version = data.draw(st.sampled_from(["v1", "v2", "v3", "v0"]))  # odd versions: test_version_segment
    method = data.draw(st.sampled_from(["GET", "GET", "GET", "DELETE"]))
    keys = _QIDO_KEYS + _FEED_KEYS

    def segment(name: str) -> str:
        if method == "DELETE":
            return data.draw(_nobody_segments())
        if name == "frames":
            return data.draw(_frame_lists())
        if name == "path":
            return data.draw(_bulk_paths())
        return data.draw(_segments(seeded.uids))

    template = data.draw(st.sampled_from(_get_templates() if method == "GET" else _delete_templates()))
    path = _fill(template, segment)
    query = data.draw(_query_strings(keys, seeded.uids))
    check(server, http.request(method, f"{server.url}/{version}{path}?{query}"))
