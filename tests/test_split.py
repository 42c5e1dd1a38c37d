"""The split: disjoint, complete, stratified, reproducible, and checked when reused."""

from collections import Counter

import pytest

from fracdata.data import DataError, Dataset, Record
from fracdata.split import load_split, records_by_split, save_split
from train.split import make_split


def _dataset(n=400):
    recs = []
    regions = ["hand"] * 40 + ["leg"] * 45 + ["hip"] * 8 + ["shoulder"] * 7
    for i in range(n):
        recs.append(Record(f"IMG{i:05d}.jpg", path=None, label=int(i % 6 == 0), region=regions[i % 100],
                           view="frontal", hardware=0, multiscan=0))
    return Dataset("test", root=None, records=recs)


def test_split_is_disjoint_and_complete():
    ds = _dataset()
    a = make_split(ds, seed=1)
    parts = records_by_split(ds, a)
    ids = [set(r.image_id for r in rs) for rs in parts.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == {r.image_id for r in ds.records}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [280, 60, 60]


def test_split_is_stratified_by_label_and_region():
    ds = _dataset()
    parts = records_by_split(ds, make_split(ds, seed=1))
    for split, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        got = Counter((r.label, r.region) for r in parts[split])
        want = Counter((r.label, r.region) for r in ds.records)
        for key in [(0, "hand"), (0, "leg"), (1, "hand"), (1, "leg")]:
            assert abs(got[key] - want[key] * frac) <= 2, (split, key)
        assert abs(sum(r.label for r in parts[split]) - sum(r.label for r in ds.records) * frac) <= 2


def test_split_is_reproducible_and_seed_dependent():
    ds = _dataset()
    assert make_split(ds, seed=3) == make_split(ds, seed=3)
    assert make_split(ds, seed=3) != make_split(ds, seed=4)


def test_save_load_round_trip_and_checksum(tmp_path):
    ds = _dataset()
    a = make_split(ds, seed=1)
    sha1 = save_split(a, ds, tmp_path / "s.csv")
    sha2 = save_split(a, ds, tmp_path / "t.csv")
    assert sha1 == sha2 and len(sha1) == 64
    assert load_split(tmp_path / "s.csv", ds) == a


def test_reusing_a_split_made_for_other_data_fails(tmp_path):
    ds = _dataset()
    save_split(make_split(ds, seed=1), ds, tmp_path / "s.csv")
    smaller = Dataset("x", None, ds.records[:-10])
    with pytest.raises(DataError, match="not in the dataset"):
        load_split(tmp_path / "s.csv", smaller)
    bigger = Dataset("x", None, ds.records + [Record("NEW.jpg", None, 0, "hand", "frontal", 0, 0)])
    with pytest.raises(DataError, match="in no split"):
        load_split(tmp_path / "s.csv", bigger)
    text = (tmp_path / "s.csv").read_text().splitlines()
    text.append(text[1])
    (tmp_path / "dup.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match="listed twice"):
        load_split(tmp_path / "dup.csv", ds)
