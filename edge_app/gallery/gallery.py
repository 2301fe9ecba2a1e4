"""The in-memory gallery the device searches: vectors, labels, persons and a search engine.

Built from a verified bundle (``edge_app.gallery.bundle.load_bundle``). A frame can
hold several faces, so search takes a batch of query vectors at once. With a
per-photo template one person has several rows; results are per person (best row).

A bundle's ``score`` says how a face is scored against a row: raw cosine, or cosine
normalised against the calibration cohort (models/scoring.py; the row statistics are
computed here, once per gallery). ``Match.similarity`` is that score, the value the
threshold (``Gallery.threshold``) applies to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_app.gallery.bundle import (
    HNSW_INDEX,
    BundleContents,
    BundleError,
    ModelRef,
    PersonRow,
    ScoreSpec,
    SearchSpec,
)
from edge_app.gallery.search import SearchEngine, build_search, choose_search
from models.scoring import CohortError, SNorm, cohort_for
from models.thresholds import threshold_for_gallery

# The tail a video track's fused votes are calibrated with, by the bundle's score kind. Bundles
# without normalisation predate track calibration and keep the photo table.
TRACK_SCORE = {"snorm": "track", "cosine": "cosine"}


@dataclass(frozen=True)
class Match:
    """One gallery person for one query: the best score over that person's rows."""

    person_id: str
    similarity: float  # the score the threshold applies to (normalised when the bundle says so)


class Gallery:
    def __init__(
        self,
        vectors: np.ndarray,
        labels: list[str],
        persons: dict[str, PersonRow],
        *,
        version: str,
        embedder: ModelRef,
        search: SearchSpec | None = None,
        engine: SearchEngine | None = None,
        score: ScoreSpec | None = None,
    ):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(labels):
            raise BundleError(f"gallery vectors {vectors.shape} do not match {len(labels)} labels")
        missing = sorted(set(labels) - set(persons))
        if missing:
            raise BundleError(f"gallery labels without a person row: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        self.vectors = vectors
        self.labels = list(labels)
        self._label_array = np.asarray(self.labels, dtype=object)
        self.persons = dict(persons)
        self.version = version
        self.embedder = embedder
        self.search_spec = search or choose_search(len(labels))
        self.engine = engine or build_search(vectors, self.search_spec)
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        # Enough rows to still hold k distinct persons after merging one person's rows.
        self._rows_per_person = max(counts.values(), default=1)
        self.score = score or ScoreSpec()
        self._norm = None
        if self.score.kind == "snorm":
            try:
                self._norm = SNorm(cohort_for(self.score.cohort), vectors)
            except CohortError as error:
                raise BundleError(f"gallery {version}: {error}") from None
        persons = len(self.persons)
        spec = self.score
        # Photos (``mpd identify``) and video tracks (fused votes) have their own calibrated thresholds.
        self.threshold = (
            spec.threshold if spec.threshold is not None else threshold_for_gallery(persons, score=spec.kind)
        )
        self.track_threshold = (
            spec.track_threshold
            if spec.track_threshold is not None
            else threshold_for_gallery(persons, score=TRACK_SCORE[spec.kind])
        )

    @classmethod
    def from_bundle(cls, contents: BundleContents) -> Gallery:
        manifest = contents.manifest
        if manifest.kind != "full":
            raise BundleError(f"{contents.path}: a {manifest.kind} bundle must be applied to its base first")
        index_path = contents.path / HNSW_INDEX if HNSW_INDEX in manifest.files else None
        try:
            engine = build_search(contents.vectors, manifest.search, index_path)
        except (ValueError, RuntimeError) as error:
            raise BundleError(f"{contents.path}: cannot open the search index: {error}") from None
        return cls(
            contents.vectors,
            contents.labels,
            contents.persons,
            version=manifest.gallery_version,
            embedder=manifest.embedder,
            search=manifest.search,
            engine=engine,
            score=manifest.score,
        )

    @property
    def model_id(self) -> str:
        return self.embedder.id

    @property
    def size(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return len(self.persons)

    def person(self, person_id: str) -> PersonRow:
        try:
            return self.persons[person_id]
        except KeyError:
            raise KeyError(f"person {person_id!r} is not in gallery {self.version}") from None

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        """Top ``k`` distinct persons for each query vector (rows of ``queries``), best first."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if len(queries) == 0 or self.size == 0:
            return [[] for _ in range(len(queries))]
        rescore = self._norm.scores if self._norm is not None else None
        similarities, rows = self.engine.search(queries, k * self._rows_per_person, rescore)
        results = []
        for query_similarities, query_rows in zip(similarities, rows, strict=True):
            matches: list[Match] = []
            seen: set[str] = set()
            for similarity, row in zip(query_similarities, query_rows, strict=True):
                if row < 0:  # hnswlib pads with -1 when it finds fewer than asked
                    continue
                person_id = self._label_array[row]
                if person_id in seen:
                    continue
                seen.add(person_id)
                matches.append(Match(person_id=person_id, similarity=float(similarity)))
                if len(matches) == k:
                    break
            results.append(matches)
        return results

    def identify(self, queries: np.ndarray, threshold: float) -> list[Match | None]:
        """The best person per query if its similarity reaches ``threshold``, else None."""
        return [
            matches[0] if matches and matches[0].similarity >= threshold else None
            for matches in self.search(queries, k=1)
        ]
