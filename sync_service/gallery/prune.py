"""Pruning after each publish: privacy (a resolved person's template leaves everything a
device can download in the same cycle) and bounded storage.

- Published root of a scope: only what the live ``latest.json`` names is kept (its full
  bundle and its deltas, which the build makes only from bases younger than the retention).
  Every earlier version, and every delta from a base past the retention, is deleted. A
  delta carries the *new* gallery's additions and the ids leaving it, never an old template.
- Build output (cloud-private) of a scope: builds older than the retention are deleted,
  except the current one. Younger builds stay: the next build makes deltas from them for
  devices that were offline.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edge_app.gallery.pointer import POINTER, LatestPointer
from sync_service.cycle.config import DEFAULT_SCOPE
from sync_service.cycle.scopes import build_prefix, published_prefix
from sync_service.gallery.publish import read_build_record
from sync_service.store import Store

log = logging.getLogger(__name__)

VERSION_DIR = re.compile(r"^(\d{8}T\d{6}Z)/")


@dataclass
class PruneResult:
    scope: str
    published_deleted: list[str] = field(default_factory=list)  # keys
    build_versions_deleted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "scope": self.scope,
            "published_deleted": len(self.published_deleted),
            "build_versions_deleted": self.build_versions_deleted,
        }


def prune_published(dest: Store, scope: str = DEFAULT_SCOPE) -> list[str]:
    """Delete every object of the scope's published root that its live pointer does not name."""
    root = published_prefix(scope)
    data = dest.read_bytes(root + POINTER)
    if data is None:
        return []  # nothing published yet: nothing to keep, and nothing of ours to delete
    pointer = LatestPointer.parse(data, f"{dest.url}/{root}{POINTER}")
    keep = [root + pointer.full] + [root + ref.path for ref in pointer.all_deltas()]
    deleted = []
    for key in dest.list_keys(root):
        relative = key[len(root) :]
        if relative == POINTER or any(key.startswith(prefix) for prefix in keep):
            continue
        if not VERSION_DIR.match(relative):
            continue  # not ours (another scope's folder under the root, an operator's file)
        dest.delete(key)
        deleted.append(key)
    if deleted:
        log.info("prune: %d published objects of %s removed (live: %s)", len(deleted), scope, pointer.gallery_version)
    return deleted


def prune_build(out: Store, now: datetime, retention: timedelta, scope: str = DEFAULT_SCOPE) -> list[str]:
    """Delete the scope's builds older than ``retention`` (never the current one)."""
    from sync_service.gallery.nightly import version_time

    root = build_prefix(scope)
    try:
        current = read_build_record(out, root).gallery_version
    except Exception:  # no build yet, or an unreadable record: delete nothing
        return []
    cutoff = now - retention
    doomed: dict[str, list[str]] = {}
    for key in out.list_keys(root):
        match = VERSION_DIR.match(key[len(root) :])
        if match and match.group(1) != current and version_time(match.group(1)) < cutoff:
            doomed.setdefault(match.group(1), []).append(key)
    for _, keys in sorted(doomed.items()):
        for key in keys:
            out.delete(key)
    if doomed:
        log.info("prune: builds %s of %s removed (older than %s)", sorted(doomed), scope, retention)
    return sorted(doomed)


def prune(build: Store, dest: Store, now: datetime, retention: timedelta, scope: str = DEFAULT_SCOPE) -> PruneResult:
    result = PruneResult(scope)
    result.published_deleted = prune_published(dest, scope)
    result.build_versions_deleted = prune_build(build, now, retention, scope)
    return result
