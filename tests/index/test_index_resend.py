"""Index.add_instances with a `same_file` comparison: an instance already indexed (or added earlier in the
batch) whose file is the same is "identical" and changes nothing, whatever the overwrite setting; the
comparison is asked only for a known SOP Instance UID whose file size matches."""

from __future__ import annotations

import pytest

from dicomd.index import Index, NewInstance

from support.index_rows import make_parsed, new


class Comparisons:
    """A same_file that answers from a set of (stored key, new key) pairs and records what it was asked."""

    def __init__(self, *same: tuple[str, str]) -> None:
        self.same = set(same)
        self.asked: list[tuple[str, str]] = []

    def __call__(self, stored_key: str, new_key: str) -> bool:
        self.asked.append((stored_key, new_key))
        return (stored_key, new_key) in self.same


def sized(item: NewInstance, size: int) -> NewInstance:
    item.file_size = size
    return item


def _actions(index: Index) -> list[str]:
    return [e.action for e in index.changefeed(offset=0, limit=100, v2=False)]


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_identical_instance_changes_nothing(index: Index, overwrite: bool) -> None:
    assert index.add_instances([new(make_parsed(), "k1")], overwrite=False)[0].status == "created"
    same = Comparisons(("k1", "k2"))
    [result] = index.add_instances([new(make_parsed(), "k2")], overwrite=overwrite, same_file=same)
    assert (result.status, result.replaced_object_key) == ("identical", None)
    assert same.asked == [("k1", "k2")]
    assert index.find_instances(1, "1.2.3")[0].object_key == "k1"
    assert _actions(index) == ["Create"]  # no change-feed entry
    assert index.claim_deleted_objects(10) == []  # the stored object stays


def test_a_different_file_follows_the_duplicate_policy(index: Index) -> None:
    index.add_instances([new(make_parsed(), "k1")], overwrite=False)
    differ = Comparisons()
    [result] = index.add_instances([new(make_parsed(), "k2")], overwrite=False, same_file=differ)
    assert result.status == "exists" and differ.asked == [("k1", "k2")]
    [result] = index.add_instances([new(make_parsed(), "k3")], overwrite=True, same_file=differ)
    assert (result.status, result.replaced_object_key) == ("replaced", "k1")
    assert _actions(index) == ["Create", "Update"]


def test_the_bytes_are_compared_only_for_a_known_uid_of_the_same_size(index: Index) -> None:
    asked = Comparisons(("k1", "k2"), ("k1", "k3"))
    first = sized(new(make_parsed(), "k1"), 1000)
    other = new(make_parsed(sop="1.2.3.1.2"), "n1")
    assert [r.status for r in index.add_instances([first, other], overwrite=False, same_file=asked)] == [
        "created",
        "created",
    ]
    assert asked.asked == []  # new UIDs: nothing read
    bigger = sized(new(make_parsed(), "k2"), 1001)
    assert index.add_instances([bigger], overwrite=False, same_file=asked)[0].status == "exists"
    assert asked.asked == []  # another size: not the same file, nothing read
    # a replacement records its size: the next comparison uses it
    assert index.add_instances([bigger], overwrite=True, same_file=asked)[0].status == "replaced"
    again = sized(new(make_parsed(), "k3"), 1000)
    assert index.add_instances([again], overwrite=True, same_file=asked)[0].status == "replaced"
    assert asked.asked == []


def test_an_identical_instance_twice_in_one_batch(index: Index) -> None:
    same = Comparisons(("a", "b"))
    a, b, c = new(make_parsed(), "a"), new(make_parsed(), "b"), new(make_parsed(), "c")
    results = index.add_instances([a, b, c], overwrite=True, same_file=same)
    # b is a's bytes again; c differs and replaces a (pending in the same batch)
    assert [(r.status, r.replaced_object_key) for r in results] == [
        ("created", None),
        ("identical", None),
        ("replaced", "a"),
    ]
    assert same.asked == [("a", "b"), ("a", "c")]
    assert index.find_instances(1, "1.2.3")[0].object_key == "c"
    assert _actions(index) == ["Create", "Update"]


def test_a_conflict_is_reported_before_any_comparison(index: Index) -> None:
    index.add_instances([new(make_parsed(), "k1")], overwrite=False)
    asked = Comparisons(("k1", "k2"))
    elsewhere = new(make_parsed(series="1.2.3.9"), "k2")
    assert index.add_instances([elsewhere], overwrite=False, same_file=asked)[0].status == "conflict"
    assert asked.asked == []
