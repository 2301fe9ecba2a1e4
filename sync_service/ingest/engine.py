"""The ingest run: list, fetch what is new or changed, store photos, mark what left.

Incremental: a case whose listed modified time equals the stored one is not fetched
again, and a photo already stored from the same URL is not downloaded again.
Resumable: the listing and the set of finished cases are checkpointed in the store
(``state/ingest-{source}/``); a run with the same parameters picks up from there.
Robust: a malformed case is logged with its id and skipped, a bad photo is rejected
with its reason, and every store write is atomic (photos before the case that
points at them), so a kill at any moment leaves a consistent store.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from sync_service.http import BlockedRequest, BodyTooLarge, HttpError, MalformedResponse
from sync_service.sources.base import SourceAdapter
from sync_service.sources.photos import PhotoRejected
from sync_service.sources.records import CaseSummary, MalformedCase, PersonRecord
from sync_service.store import RejectedPhoto, Store, StoredCase, StoredPhoto

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


class SourceDown(RuntimeError):
    """The source failed too many requests in a row (after retries): stop, keep the checkpoint."""


@dataclass
class IngestSummary:
    source: str
    cases_seen: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: Counter = field(default_factory=Counter)  # reason -> count
    not_found: list[str] = field(default_factory=list)
    malformed: dict[str, str] = field(default_factory=dict)  # case id -> reason
    fetch_failed: dict[str, str] = field(default_factory=dict)
    photos_stored: int = 0
    photos_kept: int = 0
    photos_rejected: Counter = field(default_factory=Counter)  # reason -> count
    listing_errors: dict[str, str] = field(default_factory=dict)  # scope -> error
    listing_incomplete: dict[str, str] = field(default_factory=dict)  # scope -> why some cases were not shown
    vanished_check: str = ""
    resumed: bool = False
    requests: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IngestSummary:
        summary = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        summary.removed = Counter(summary.removed)
        summary.photos_rejected = Counter(summary.photos_rejected)
        return summary

    def lines(self) -> list[str]:
        removed = sum(self.removed.values())
        rejected = sum(self.photos_rejected.values())
        out = [
            f"{self.source}: {self.cases_seen} cases seen, {self.new} new, {self.changed} changed, "
            f"{self.unchanged} unchanged, {removed} removed"
            + (f" ({', '.join(f'{n} {r}' for r, n in sorted(self.removed.items()))})" if removed else ""),
            f"photos: {self.photos_stored} stored, {self.photos_kept} already stored, {rejected} rejected"
            + (f" ({', '.join(f'{n} {r}' for r, n in sorted(self.photos_rejected.items()))})" if rejected else ""),
        ]
        if self.not_found:
            out.append(f"not found (404, skipped): {', '.join(self.not_found[:20])}")
        for case_id, reason in list(self.malformed.items())[:20]:
            out.append(f"malformed, skipped: {case_id}: {reason}")
        for case_id, reason in list(self.fetch_failed.items())[:20]:
            out.append(f"fetch failed, skipped: {case_id}: {reason}")
        for scope, error in self.listing_errors.items():
            out.append(f"listing failed for {scope or 'all'}: {error}")
        for scope, reason in self.listing_incomplete.items():
            out.append(f"listing incomplete for {scope or 'all'}: {reason}")
        if self.vanished_check:
            out.append(self.vanished_check)
        out.append(
            f"{self.requests} requests in {self.seconds:.1f}s"
            + (" (resumed from a checkpoint)" if self.resumed else "")
        )
        return out


class Ingest:
    """One ingest run of one source into one store."""

    def __init__(
        self,
        adapter: SourceAdapter,
        store: Store,
        *,
        scopes: list[str] | None = None,
        limit: int | None = None,
        progress: bool = False,
        checkpoint_seconds: float = 2.0,
        max_consecutive_failures: int = 5,
        max_checkpoint_age: float = 12 * 3600,
        on_case: Callable[[str], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.store = store
        self.source = adapter.name
        self.wanted_scopes = scopes or None
        self.limit = limit
        self.progress = progress
        self.checkpoint_seconds = checkpoint_seconds
        self.max_consecutive_failures = max_consecutive_failures
        self.max_checkpoint_age = max_checkpoint_age
        self.started_at = _now()
        self.on_case = on_case  # test/benchmark hook, called after each finished case
        self.params = {"base_url": adapter.base_url, "scopes": scopes or [], "limit": limit}
        self.state_prefix = f"state/ingest-{self.source}"

    # --- checkpoint -----------------------------------------------------------------------
    def _load_checkpoint(self) -> tuple[dict, dict] | None:
        progress = self.store.read_json(f"{self.state_prefix}/progress.json")
        listing = self.store.read_json(f"{self.state_prefix}/listing.json")
        if not progress or not listing:
            return None
        if progress.get("version") != CHECKPOINT_VERSION or progress.get("params") != self.params:
            log.warning("ignoring a checkpoint from a run with other parameters: %s", progress.get("params"))
            return None
        started = datetime.fromisoformat(progress.get("started_at", "1970-01-01T00:00:00+00:00"))
        if (_now() - started).total_seconds() > self.max_checkpoint_age:
            # An old listing would hide what changed since; start over.
            log.warning("ignoring a checkpoint from %s, older than %.0f h", started, self.max_checkpoint_age / 3600)
            return None
        return progress, listing

    def _save_listing(self, listing: dict) -> None:
        self.store.write_json(f"{self.state_prefix}/listing.json", listing)

    def _save_progress(self, done: set[str], summary: IngestSummary) -> None:
        self.store.write_json(
            f"{self.state_prefix}/progress.json",
            {
                "version": CHECKPOINT_VERSION,
                "params": self.params,
                "started_at": self.started_at.isoformat(),
                "done": sorted(done),
                "summary": summary.to_json(),
            },
        )

    def _clear_checkpoint(self) -> None:
        self.store.delete(f"{self.state_prefix}/progress.json")
        self.store.delete(f"{self.state_prefix}/listing.json")

    # --- run --------------------------------------------------------------------------------
    def run(self) -> IngestSummary:
        started = time.monotonic()
        requests_before = self.adapter.client.stats.requests
        checkpoint = self._load_checkpoint()
        if checkpoint:
            progress, listing = checkpoint
            summary = IngestSummary.from_json(progress["summary"])
            summary.resumed = True
            self.started_at = datetime.fromisoformat(progress["started_at"])
            done = set(progress["done"])
            log.info("resuming %s ingest: %d cases already done", self.source, len(done))
        else:
            summary, done = IngestSummary(self.source), set()
            listing = {"scopes": None, "pages": {}}
            self._save_progress(done, summary)
        earlier_seconds, earlier_requests = summary.seconds, summary.requests
        summary.listing_errors = {}

        if listing["scopes"] is None:
            listing["scopes"] = self.adapter.list_scopes(self.wanted_scopes)
            self._save_listing(listing)
        scopes_bar = tqdm(listing["scopes"], desc=f"list {self.source}", unit="state",
                          disable=not self.progress or len(listing["scopes"]) < 2)  # fmt: skip
        for scope in scopes_bar:
            if scope in listing["pages"]:
                continue
            try:
                rows = [s.model_dump(mode="json") for s in self.adapter.list_scope(scope)]
            except HttpError as error:
                log.error("listing %s %s failed: %s", self.source, scope or "(all)", error)
                summary.listing_errors[scope] = str(error)
                continue
            listing["pages"][scope] = rows
            if scope in self.adapter.incomplete:
                summary.listing_incomplete[scope] = self.adapter.incomplete[scope]
            self._save_listing(listing)
        if listing["scopes"] and not listing["pages"]:
            raise SourceDown(
                f"{self.source} at {self.adapter.base_url}: every listing request failed "
                f"(first: {next(iter(summary.listing_errors.values()))}). Run the same command again to resume."
            )

        cases = self._merge(listing)
        if self.limit is not None:
            cases = dict(list(cases.items())[: self.limit])
        summary.cases_seen = len(cases)

        last_save = time.monotonic()
        failures_in_a_row = 0
        try:
            with tqdm(total=len(cases), initial=len(done & cases.keys()), unit="case", disable=not self.progress,
                      desc=f"ingest {self.source}") as bar:  # fmt: skip
                for case_id, (summary_row, scopes) in cases.items():
                    if case_id in done:
                        continue
                    try:
                        self._ingest_case(summary_row, scopes, summary)
                        failures_in_a_row = 0
                        summary.fetch_failed.pop(case_id, None)
                    except HttpError as error:
                        failures_in_a_row += 1
                        summary.fetch_failed[case_id] = str(error)
                        log.error("%s case %s: fetch failed, skipped: %s", self.source, case_id, error)
                        if failures_in_a_row >= self.max_consecutive_failures:
                            raise SourceDown(
                                f"{self.source} at {self.adapter.base_url} failed {failures_in_a_row} cases in a row "
                                f"(last: {error}); stopping. Run the same command again to resume."
                            ) from None
                        continue  # not done: a resumed run tries it again
                    done.add(case_id)
                    bar.update(1)
                    if self.on_case:
                        self.on_case(case_id)
                    if time.monotonic() - last_save >= self.checkpoint_seconds:
                        summary.requests = earlier_requests + self.adapter.client.stats.requests - requests_before
                        summary.seconds = earlier_seconds + time.monotonic() - started
                        self._save_progress(done, summary)
                        last_save = time.monotonic()
        except BaseException:
            summary.requests = earlier_requests + self.adapter.client.stats.requests - requests_before
            summary.seconds = earlier_seconds + time.monotonic() - started
            try:
                self._save_progress(done, summary)
            except Exception:  # the store itself may be what failed: keep the original error
                log.exception("could not save the %s ingest checkpoint", self.source)
            raise

        self._mark_vanished(listing, cases, summary)
        summary.requests = earlier_requests + self.adapter.client.stats.requests - requests_before
        summary.seconds = earlier_seconds + time.monotonic() - started
        self.store.write_json(f"state/last-run-{self.source}.json", summary.to_json())
        if summary.listing_errors:
            self._save_progress(done, summary)  # listing incomplete: a rerun retries the failed scopes
        else:
            self._clear_checkpoint()
        return summary

    @staticmethod
    def _merge(listing: dict) -> dict[str, tuple[CaseSummary, list[str]]]:
        """Cases in listing order, deduplicated (a NamUs case can appear in several states)."""
        cases: dict[str, tuple[CaseSummary, list[str]]] = {}
        for scope in listing["scopes"]:
            for row in listing["pages"].get(scope, []):
                summary_row = CaseSummary.model_validate(row)
                if summary_row.case_id in cases:
                    cases[summary_row.case_id][1].append(scope)
                else:
                    cases[summary_row.case_id] = (summary_row, [scope])
        return cases

    def _ingest_case(self, listed: CaseSummary, scopes: list[str], summary: IngestSummary) -> None:
        case_id = listed.case_id
        stored = self.store.get_case(self.source, case_id)
        if (
            stored is not None
            and (not stored.removed or stored.removed_reason == "resolved")
            and listed.modified is not None
            and stored.record.modified == listed.modified
            # A rejected photo may have been a passing failure (a WAF page, a cut
            # transfer): such a case is read again so the photo gets another chance.
            and not stored.rejected_photos
        ):
            summary.unchanged += 1
            if sorted(stored.scopes) != sorted(scopes):
                self.store.put_case(stored.model_copy(update={"scopes": sorted(scopes)}))
            return
        try:
            record = self.adapter.fetch_case(case_id)
        except (MalformedCase, MalformedResponse, BodyTooLarge, BlockedRequest) as error:
            # Keep whatever we stored before: a broken answer today is not evidence the case changed.
            # An oversized or misdirected answer is this case's problem, not the source being down.
            summary.malformed[case_id] = _short(str(error))
            log.error("%s case %s: malformed, skipped: %s", self.source, case_id, _short(str(error)))
            return
        except HttpError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError, OverflowError) as error:
            # A body shape the parser did not foresee: skipped like any malformed case, so
            # one hostile body cannot stop every run (and every resume) at the same case.
            reason = f"unreadable body ({type(error).__name__}: {_short(str(error), 200)})"
            summary.malformed[case_id] = reason
            log.exception("%s case %s: malformed, skipped: %s", self.source, case_id, reason)
            return
        if record is None:
            summary.not_found.append(case_id)
            log.warning("%s case %s: 404, the source no longer publishes it", self.source, case_id)
            self._remove(stored, "not found", summary)
            return
        if record.resolved:
            # Keep the record (so it is not fetched again while unchanged), never the photos.
            self.store.put_case(
                StoredCase(record=record, removed=True, removed_reason="resolved", scopes=sorted(scopes))
            )
            if stored is not None and not stored.removed:
                for photo in stored.photos:
                    self.store.delete(photo.key)
                summary.removed["resolved"] += 1
            return
        self._store_case(record, stored, sorted(scopes), summary)

    def _store_case(
        self, record: PersonRecord, stored: StoredCase | None, scopes: list[str], summary: IngestSummary
    ) -> None:
        previous = {p.photo_id: p for p in stored.photos} if stored and not stored.removed else {}
        photos: list[StoredPhoto] = []
        rejected: list[RejectedPhoto] = []
        for ref in record.photos:
            kept = previous.get(ref.photo_id)
            if kept is not None and kept.source_url == ref.url:
                photos.append(kept)
                summary.photos_kept += 1
                continue
            try:
                data = self.adapter.fetch_photo(ref)
                photos.append(
                    self.store.put_photo(
                        self.source, record.case_id, ref.photo_id, data, category=ref.category, source_url=ref.url
                    )
                )
                summary.photos_stored += 1
            except PhotoRejected as error:
                rejected.append(RejectedPhoto(photo_id=ref.photo_id, reason=error.reason, detail=error.detail))
                summary.photos_rejected[error.reason] += 1
                log.warning("%s case %s photo %s rejected: %s", self.source, record.case_id, ref.photo_id, error)
            except BodyTooLarge as error:
                rejected.append(RejectedPhoto(photo_id=ref.photo_id, reason="too large", detail=str(error)))
                summary.photos_rejected["too large"] += 1
                log.warning("%s case %s photo %s: %s", self.source, record.case_id, ref.photo_id, error)
            except BlockedRequest as error:  # another host, a redirect away, or a private address
                rejected.append(RejectedPhoto(photo_id=ref.photo_id, reason=error.reason, detail=str(error)))
                summary.photos_rejected[error.reason] += 1
                log.warning("%s case %s photo %s refused: %s", self.source, record.case_id, ref.photo_id, error)
            except HttpError as error:
                reason = f"download failed (HTTP {error.status})" if error.status else "download failed"
                rejected.append(RejectedPhoto(photo_id=ref.photo_id, reason=reason, detail=str(error)))
                summary.photos_rejected[reason] += 1
                log.warning("%s case %s photo %s: %s", self.source, record.case_id, ref.photo_id, error)
        new_case = StoredCase(record=record, photos=photos, rejected_photos=rejected, scopes=scopes)
        if stored is None or stored.removed:
            summary.new += 1
        elif stored.record == record and stored.photos == photos and stored.rejected_photos == rejected:
            summary.unchanged += 1
            if stored.scopes != scopes:
                self.store.put_case(stored.model_copy(update={"scopes": scopes}))
            return
        else:
            summary.changed += 1
        self.store.put_case(new_case)  # after its photos, so it never points at a missing file
        for old in previous.values():
            if old.key not in {p.key for p in photos}:
                self.store.delete(old.key)

    def _remove(self, stored: StoredCase | None, reason: str, summary: IngestSummary) -> None:
        """Mark a stored case removed and delete its photos (no one keeps a found person's face)."""
        if stored is None or stored.removed:
            return
        self.store.put_case(
            stored.model_copy(update={"removed": True, "removed_reason": reason, "photos": [], "ingested_at": _now()})
        )
        for photo in stored.photos:
            self.store.delete(photo.key)
        summary.removed[reason] += 1

    def _mark_vanished(self, listing: dict, cases: dict, summary: IngestSummary) -> None:
        if self.limit is not None:
            summary.vanished_check = "vanished cases not checked (--limit covers only part of the listing)"
            return
        if summary.listing_errors or summary.listing_incomplete:
            summary.vanished_check = "vanished cases not checked (the listing was incomplete)"
            return
        run_scopes = set(listing["scopes"])
        whole_source = self.wanted_scopes is None
        for stored in self.store.iter_cases(self.source, active_only=False):
            if stored.removed or stored.record.case_id in cases:
                continue
            # With --states, only cases known to live in those states can be judged gone.
            if whole_source or (stored.scopes and set(stored.scopes) <= run_scopes):
                self._remove(stored, "no longer listed", summary)


def _short(text: str, limit: int = 500) -> str:
    """A reason short enough for the summary and the checkpoint, whatever a source sent."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _now() -> datetime:
    return datetime.now(UTC)
