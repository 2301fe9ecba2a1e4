"""Score normalisation: one threshold means the same risk for every gallery person and every face.

A raw cosine of 0.5 is not equally rare for everyone: some gallery photos (and some faces
on camera) sit closer to the average face and resemble many strangers more than others
do. Symmetric score normalisation (S-norm) measures each side against a calibration
cohort of other people's faces and scores how unusual the cosine is for *both*:

    z = ((cos - mu_row) / sd_row + (cos - mu_face) / sd_face) / 2
    score = impostor_mean + impostor_std * z      (back on the cosine scale, so 0.55 still reads like one)

``mu_row``/``sd_row`` are the mean and standard deviation of the row's cosine against the
cohort, ``mu_face``/``sd_face`` the same for the face being searched. Because cosine is
linear in each vector, both come exactly from the cohort's mean vector ``m`` and
covariance ``C``: mu = v . m, sd = sqrt(v' C v). So the cohort ships as those aggregate
moments (a 128-vector and a 128x128 matrix from ~5,500 photos of ~2,800 people; no face
or embedding of anyone can be recovered from them), not as photos or embeddings.

The shipped cohort (``cohort.npz``) and the threshold table (``impostor_tail.json``) are
written together by ``benchmarks/calibrate.py --write``; a bundle names the cohort id it
was built for, and a device refuses a bundle normalised with a cohort it does not have.
Measured gains, method and limits: docs/recognition.md.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COHORT_FILE = Path(__file__).with_name("cohort.npz")


class CohortError(ValueError):
    """The cohort file is missing, malformed, or not the one a gallery was normalised with."""


@dataclass(frozen=True)
class Cohort:
    """Aggregate statistics of the calibration cohort's embeddings (see module docstring)."""

    mean: np.ndarray  # float64 (d,)
    cov: np.ndarray  # float64 (d, d), symmetric positive semi-definite
    impostor_mean: float  # mean cosine between different people in the cohort
    impostor_std: float  # its standard deviation
    description: str = ""

    @functools.cached_property
    def id(self) -> str:
        """Content id: a bundle normalised with this cohort carries it in its manifest."""
        digest = hashlib.sha256()
        for array in (self.mean, self.cov, np.array([self.impostor_mean, self.impostor_std])):
            digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
        return f"cohort-{digest.hexdigest()[:16]}"

    @functools.cached_property
    def _factor(self) -> np.ndarray:
        # sd(v)^2 = v' C v = |L' v|^2 with C = L L'; eigh tolerates a singular C.
        values, vectors = np.linalg.eigh(self.cov)
        return (vectors * np.sqrt(np.clip(values, 0.0, None))).astype(np.float32)

    def stats(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of each vector's cosine against the cohort, float32."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, len(self.mean))
        mean = vectors @ self.mean.astype(np.float32)
        std = np.linalg.norm(vectors @ self._factor, axis=1)
        return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            mean=self.mean.astype("<f8"),
            cov=self.cov.astype("<f8"),
            impostor=np.array([self.impostor_mean, self.impostor_std], "<f8"),
            description=np.array(self.description),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "cohort") -> Cohort:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                mean, cov, impostor = arrays["mean"], arrays["cov"], arrays["impostor"]
                description = str(arrays["description"]) if "description" in arrays.files else ""
        except (OSError, ValueError, KeyError, EOFError) as error:
            raise CohortError(f"{source}: not a cohort file: {error}") from None
        d = len(mean)
        if mean.ndim != 1 or cov.shape != (d, d) or impostor.shape != (2,) or not np.all(np.isfinite(cov)):
            raise CohortError(f"{source}: malformed cohort (mean {mean.shape}, cov {cov.shape})")
        if not impostor[1] > 0:
            raise CohortError(f"{source}: impostor std must be positive, got {impostor[1]}")
        return cls(mean.astype(np.float64), cov.astype(np.float64), float(impostor[0]), float(impostor[1]), description)


@functools.cache
def shipped_cohort() -> Cohort:
    """The cohort calibrated with this code (``models/cohort.npz``)."""
    if not COHORT_FILE.is_file():
        raise CohortError(f"{COHORT_FILE} is missing; run benchmarks/calibrate.py --write")
    return Cohort.from_bytes(COHORT_FILE.read_bytes(), str(COHORT_FILE))


def cohort_for(cohort_id: str) -> Cohort:
    """The shipped cohort if it is ``cohort_id``; otherwise a clear ``CohortError``."""
    cohort = shipped_cohort()
    if cohort.id != cohort_id:
        raise CohortError(
            f"the gallery was normalised with {cohort_id}, this software has {cohort.id}: "
            "update the device software (or rebuild the gallery with this version)"
        )
    return cohort


class SNorm:
    """S-norm for one gallery: row statistics computed once, face statistics per search."""

    def __init__(self, cohort: Cohort, rows: np.ndarray) -> None:
        self.cohort = cohort
        self.row_mean, self.row_std = cohort.stats(rows)
        self._row_inv = (1.0 / self.row_std).astype(np.float32)
        self._row_offset = (-self.row_mean / self.row_std).astype(np.float32)

    def scores(self, cosines: np.ndarray, rows: np.ndarray | None, queries: np.ndarray) -> np.ndarray:
        """Normalised scores of ``cosines`` [q, m] between ``queries`` [q, d] and gallery ``rows``
        [q, m] (row indices; None means all rows in order)."""
        face_mean, face_std = self.cohort.stats(queries)
        row_inv = self._row_inv if rows is None else self._row_inv[rows]
        row_offset = self._row_offset if rows is None else self._row_offset[rows]
        z_row = cosines * row_inv + row_offset
        z_face = (cosines - face_mean[:, None]) / face_std[:, None]
        half_std = np.float32(0.5 * self.cohort.impostor_std)
        return (np.float32(self.cohort.impostor_mean) + half_std * (z_row + z_face)).astype(np.float32)


def template_vector(vector: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """A gallery photo's template: the unit mean of the face's embedding and its mirror image's
    (measured: identification +0.4-0.6 points at 1 false alarm per 1,000 strangers)."""
    combined = np.asarray(vector, np.float32) + np.asarray(mirrored, np.float32)
    return (combined / np.linalg.norm(combined)).astype(np.float32)
