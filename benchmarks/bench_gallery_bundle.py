"""Gallery bundle sizes (full vs 1%-churn delta) for 25,000 persons, and the time a
device takes to apply each; JSON on stdout.

    python benchmarks/bench_gallery_bundle.py [--persons 25000] [--repeats 5] [--out FILE]

Embeddings are synthetic but shaped like real ones: a Gaussian fitted to real SFace
embeddings of the shared test photos (per-person means: mean vector and shrunk
covariance; per-photo residuals: per-dimension spread), sampled for 25,000 persons
with two photos each, then turned into gallery rows with the builder's template. The
report compares same/different-person cosines of the real and synthetic sets. Sizes
depend on the row count and the bytes of float32 (which do not compress), so this
shape only matters for the compressed figures, reported for reference.

Churn (per day, 1% of persons = 250): 100 cases resolved, 100 new cases, 25 persons
with a new photo, 25 person rows edited.

Apply times: a device (``SyncAgent`` reading a folder, so no network in the figure)
syncs the full bundle into an empty gallery directory, and a delta onto the previous
version, interleaved ``--repeats`` times; both include verification (signature and
every sha256), writing, the atomic install and the swap into a ``LiveGallery``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from edge_app.gallery.bundle import ModelRef, PersonRow  # noqa: E402
from edge_app.gallery.delta import GalleryData, canonical, group_by_person  # noqa: E402
from edge_app.gallery.sync_agent import SyncAgent  # noqa: E402
from sync_service.gallery.nightly import write_build  # noqa: E402
from sync_service.gallery.publish import publish  # noqa: E402
from sync_service.store import open_store  # noqa: E402

FACES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "faces" / "gallery"
FIRST = ["Alex", "Maria", "James", "Linda", "Jose", "Aisha", "Wei", "Olga", "Tomas", "Fatima", "Kenji", "Grace"]
LAST = ["Garcia", "Smith", "Nguyen", "Johnson", "Brown", "Lopez", "Kim", "Walker", "Silva", "Khan", "Young", "Reyes"]


class EmbeddingModel:
    """A Gaussian model of SFace embeddings fitted to the shared real photos."""

    def __init__(self, faces_dir: Path, max_per_person: int = 3) -> None:
        from models.images import load_image
        from models.recognizer import FaceModels

        models = FaceModels.load()
        per_person: list[np.ndarray] = []
        for person in sorted(p for p in faces_dir.iterdir() if p.is_dir()):
            vectors = []
            for photo in sorted(person.iterdir())[:max_per_person]:
                image = load_image(photo)
                faces = [f for f in models.gate(models.detect(image, thorough=True), image) if f.rejected is None]
                if faces:
                    vectors.append(models.embed(image, max(faces, key=lambda f: f.area)))
            if vectors:
                per_person.append(np.array(vectors))
        self.real = per_person
        means = np.array([v.mean(axis=0) for v in per_person])
        self.mu = means.mean(axis=0)
        sample = np.cov(means, rowvar=False)
        # Few persons for 128 dimensions: shrink toward the diagonal so the covariance is usable.
        self.cov = 0.5 * sample + 0.5 * np.diag(np.diag(sample))
        residuals = np.concatenate([v - v.mean(axis=0) for v in per_person if len(v) > 1])
        self.within = residuals.std(axis=0) * np.sqrt(2.0)  # residuals of pairs understate the spread
        self.chol = np.linalg.cholesky(self.cov + 1e-6 * np.eye(len(self.mu)))

    def persons(self, rng: np.random.Generator, count: int, photos: int = 2) -> np.ndarray:
        centres = self.mu + rng.standard_normal((count, len(self.mu))) @ self.chol.T
        shots = centres[:, None, :] + rng.standard_normal((count, photos, len(self.mu))) * self.within
        return (shots / np.linalg.norm(shots, axis=-1, keepdims=True)).astype(np.float32)

    def cosines(self, sets: list[np.ndarray], rng: np.random.Generator) -> dict:
        same = [float(v[0] @ v[1]) for v in sets if len(v) > 1]
        picks = rng.choice(len(sets), size=(2000, 2))
        different = [float(sets[a][0] @ sets[b][0]) for a, b in picks if a != b]
        return {"same_median": round(statistics.median(same), 3), "different_median": round(statistics.median(different), 3),
                "different_p99": round(float(np.percentile(different, 99)), 3)}  # fmt: skip


def rows_for(photos: np.ndarray, template: str) -> np.ndarray:
    if template == "mean":
        mean = photos.mean(axis=0)
        return (mean / np.linalg.norm(mean))[None, :].astype(np.float32)
    return photos


def row(i: int, rng: np.random.Generator) -> PersonRow:
    name = f"{FIRST[rng.integers(len(FIRST))]} {LAST[rng.integers(len(LAST))]}"
    return PersonRow(person_id=f"namus:MP{i:06d}", display_name=name, source="namus", case_id=f"MP{i:06d}")


def make_gallery(model: EmbeddingModel, persons: int, template: str, rng) -> tuple[GalleryData, int]:
    photos = model.persons(rng, persons)
    groups = {f"namus:MP{i:06d}": rows_for(photos[i], template) for i in range(persons)}
    rows = {f"namus:MP{i:06d}": row(i, rng) for i in range(persons)}
    return canonical(groups, rows, photos.shape[-1]), persons


def churn(gallery: GalleryData, model: EmbeddingModel, template: str, next_id: int, rng) -> GalleryData:
    groups = group_by_person(gallery.vectors, gallery.labels)
    rows = {p.person_id: p for p in gallery.persons}
    count = round(0.01 * len(rows))
    n_leave, n_small = round(0.4 * count), round(0.1 * count)
    ids = [str(x) for x in rng.permutation(sorted(rows))]
    for pid in ids[:n_leave]:
        del groups[pid], rows[pid]
    for pid in ids[n_leave : n_leave + n_small]:  # a new photo: the template changes
        groups[pid] = rows_for(np.concatenate([model.persons(rng, 1, 3)[0]]), template)
    for pid in ids[n_leave + n_small : n_leave + 2 * n_small]:
        rows[pid] = rows[pid].model_copy(update={"display_name": rows[pid].display_name + " Jr"})
    for i, photos in enumerate(model.persons(rng, n_leave)):
        pid = f"namus:MP{next_id + i:06d}"
        groups[pid], rows[pid] = rows_for(photos, template), row(next_id + i, rng)
    return canonical(groups, rows, gallery.vectors.shape[1])


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def gzip_bytes(path: Path) -> int:
    return sum(len(gzip.compress(p.read_bytes(), 6)) for p in path.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=25_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from sync_service.gallery.enrol import TEMPLATE

    rng = np.random.default_rng(2026)
    model = EmbeddingModel(FACES)
    synthetic = list(model.persons(rng, 500))
    report: dict = {
        "persons": args.persons,
        "photos_per_person": 2,
        "builder_template": TEMPLATE,
        "embedding_realism": {
            "real_persons": len(model.real),
            "real": model.cosines(model.real, rng),
            "synthetic": model.cosines(synthetic, rng),
        },
        "sizes": {},
    }
    key = Ed25519PrivateKey.generate()
    embedder = ModelRef(id="sface_2021dec_int8bq", sha256="487a139eb85ccd5ff30aef7d0add7f12d2bb7abb90c5f08a7f481b452a660e00")  # fmt: skip
    detector = ModelRef(id="yunet_2023mar_int8bq", sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10")  # fmt: skip
    now = datetime(2026, 11, 1, 2, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for template in sorted({TEMPLATE, "per_photo", "mean"}):
            base, next_id = make_gallery(model, args.persons, template, np.random.default_rng(1))
            changed = churn(base, model, template, next_id, np.random.default_rng(2))
            out = open_store(tmp / f"build-{template}")
            published = tmp / f"published-{template}"
            first, _ = write_build(out, base, None, embedder=embedder, detector=detector, template=template,
                                   sign=key.sign, now=now)  # fmt: skip
            publish(str(tmp / f"build-{template}"), str(published))
            second, info = write_build(out, changed, (first, base), embedder=embedder, detector=detector,
                                       template=template, sign=key.sign, now=now + timedelta(days=1))  # fmt: skip
            full_dir = tmp / f"build-{template}" / "gallery" / second.full
            delta_dir = tmp / f"build-{template}" / "gallery" / second.delta.path
            report["sizes"][template] = {
                "vectors": len(changed.labels),
                "full_bytes": directory_bytes(full_dir),
                "delta_bytes": directory_bytes(delta_dir),
                "delta_over_full": round(directory_bytes(delta_dir) / directory_bytes(full_dir), 4),
                "full_gzip_bytes": gzip_bytes(full_dir),
                "delta_gzip_bytes": gzip_bytes(delta_dir),
                "delta_contents": {k: info[k] for k in ("added_vectors", "removed_persons", "person_rows")},
            }
            publish(str(tmp / f"build-{template}"), str(published))
            if template == TEMPLATE:
                versions = (first, second)

        # Apply times on the device, full and delta interleaved.
        from edge_app.gallery.gallery import Gallery
        from edge_app.gallery.live import LiveGallery

        published = tmp / f"published-{TEMPLATE}"
        old_root = tmp / "published-old"
        shutil.copytree(published, old_root)
        pointer = json.loads((published / "latest.json").read_text())
        old_pointer = {
            **pointer,
            "gallery_version": versions[0].gallery_version,
            "full": versions[0].full,
            "delta": None,
        }
        (old_root / "latest.json").write_text(json.dumps(old_pointer))
        full_only = tmp / "published-full"
        shutil.copytree(published, full_only)
        (full_only / "latest.json").write_text(json.dumps({**pointer, "delta": None}))
        full_s, delta_s = [], []
        for i in range(args.repeats):
            device = tmp / f"device-{i}"
            seed = SyncAgent(str(old_root), device, key.public_key())
            seed.sync_once()
            live = LiveGallery(Gallery.from_bundle(seed.dir.load()))
            agent = SyncAgent(str(published), device, key.public_key(), on_swap=live.swap_bundle)
            started = time.perf_counter()
            result = agent.sync_once()
            delta_s.append(time.perf_counter() - started)
            assert result.status == "installed" and live.version == versions[1].gallery_version, result
            fresh = SyncAgent(str(full_only), tmp / f"fresh-{i}", key.public_key(), on_swap=live.swap_bundle)
            started = time.perf_counter()
            result = fresh.sync_once()
            full_s.append(time.perf_counter() - started)
            assert result.status == "installed", result
            shutil.rmtree(device)
            shutil.rmtree(tmp / f"fresh-{i}")
        report["apply_seconds"] = {
            "template": TEMPLATE,
            "full_median": round(statistics.median(full_s), 3),
            "delta_median": round(statistics.median(delta_s), 3),
            "delta_over_full": round(statistics.median(delta_s) / statistics.median(full_s), 3),
            "full_samples": [round(s, 3) for s in full_s],
            "delta_samples": [round(s, 3) for s in delta_s],
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
