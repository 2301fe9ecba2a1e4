"""The delta format: compute in the cloud, apply on the device, byte-exact result."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_app.gallery.bundle import BundleError, PersonRow, load_bundle, write_bundle
from edge_app.gallery.delta import GalleryData, apply_delta, compute_delta
from edge_app.gallery.sync_agent import device_embedder
from tests.gallery_factory import DETECTOR, Publisher, churn, synthetic_gallery


def as_delta_bundle(tmp_path, old: GalleryData, new: GalleryData):
    delta = compute_delta(old, new)
    write_bundle(
        tmp_path / "delta",
        manifest_fields={
            "gallery_version": "v2",
            "kind": "delta",
            "base_version": "v1",
            "detector": DETECTOR,
            "embedder": device_embedder(),
        },
        vectors=delta.vectors,
        labels=delta.labels,
        persons=delta.persons,
        removed=delta.removed,
    )
    return delta, load_bundle(tmp_path / "delta")


def test_gallery_files_are_the_bytes_write_bundle_writes(tmp_path):
    """Pins the serialization a device reproduces; if write_bundle changes, this fails."""
    gallery = synthetic_gallery(50)
    write_bundle(
        tmp_path,
        manifest_fields={"gallery_version": "v1", "detector": DETECTOR, "embedder": device_embedder()},
        vectors=gallery.vectors,
        labels=gallery.labels,
        persons=gallery.persons,
    )
    for name, data in gallery.files().items():
        assert (tmp_path / name).read_bytes() == data, name


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_apply_reproduces_the_new_gallery_exactly(tmp_path, seed):
    old = synthetic_gallery(400, seed=seed)
    new = churn(old, 0.05, seed=seed + 10)
    _, bundle = as_delta_bundle(tmp_path, old, new)

    result = apply_delta(old, bundle)

    assert result.labels == new.labels
    assert result.persons == new.persons
    assert np.array_equal(result.vectors, new.vectors)
    assert result.files() == new.files()


def test_delta_contents_are_what_changed():
    old = synthetic_gallery(10, seed=1)
    rows = {p.person_id: p for p in old.persons}
    groups = {pid: old.vectors[[i for i, lab in enumerate(old.labels) if lab == pid]] for pid in rows}
    gone, renamed, rephotographed = "namus:MP000001", "namus:MP000002", "namus:MP000003"
    del groups[gone], rows[gone]
    rows[renamed] = rows[renamed].model_copy(update={"display_name": "Renamed"})
    groups[rephotographed] = np.roll(groups[rephotographed], 1, axis=1)
    rows["namus:MP999999"] = PersonRow(
        person_id="namus:MP999999", display_name="New", source="namus", case_id="MP999999"
    )
    groups["namus:MP999999"] = old.vectors[:1]
    from edge_app.gallery.delta import canonical

    new = canonical(groups, rows, 128)

    delta = compute_delta(old, new)

    assert delta.removed == [gone, rephotographed]
    assert sorted(set(delta.labels)) == [rephotographed, "namus:MP999999"]
    assert [p.person_id for p in delta.persons] == [renamed, rephotographed, "namus:MP999999"]


def test_empty_delta_when_nothing_changed(tmp_path):
    gallery = synthetic_gallery(30)
    delta, bundle = as_delta_bundle(tmp_path, gallery, gallery)
    assert (delta.removed, delta.labels, delta.persons) == ([], [], [])
    assert apply_delta(gallery, bundle).files() == gallery.files()


def test_delta_that_adds_a_person_twice_is_refused(tmp_path):
    old = synthetic_gallery(20, seed=1)
    new = churn(old, 0.2, seed=2)
    _, bundle = as_delta_bundle(tmp_path, old, new)
    not_removed = bundle.model_copy(update={"removed": []})
    with pytest.raises(BundleError, match="without removing its old ones"):
        apply_delta(old, not_removed)


def test_delta_with_another_dimension_is_refused(tmp_path):
    old = synthetic_gallery(20, seed=1)
    _, bundle = as_delta_bundle(tmp_path, old, churn(old, 0.2, seed=2))
    wide = bundle.model_copy(update={"vectors": np.zeros((len(bundle.labels), 512), np.float32)})
    with pytest.raises(BundleError, match="dimension 512"):
        apply_delta(old, wide)


def test_one_percent_churn_delta_is_small(tmp_path):
    """Proportionality check at 5k persons (the 25k figure is in benchmarks/bench_gallery_sizes.py)."""
    publisher = Publisher(tmp_path, key=Ed25519PrivateKey.generate())
    base = synthetic_gallery(5000, seed=1)
    publisher.release(base, publish_it=False)
    _, info = publisher.release(churn(base, 0.01, seed=2), publish_it=False)
    assert info["delta_bytes"] <= 0.03 * info["full_bytes"], info
