"""Who an event may be about: the person tables of the galleries the cloud published.

A device names the gallery version it searched and the person it matched. The cloud
built that gallery, so it checks the claim against its own copy: the person must be in
that version, with the same source and the same case (compared by canonical id, so
``mp990010``, ``MP0990010`` and `` 990010`` are one NamUs case). Everything an SMS says
about the person then comes from the cloud's row or a fresh source lookup, never from
the device's strings.

The gallery store is a store URL (folder or ``s3://``) under which each version's
full bundle lives at ``<version>/full/``, and each scope's at
``scopes/<scope>/<version>/full/``: the build output's ``gallery/`` prefix, which is
cloud-private and keeps the versions of the retention window (the published root keeps
only the live one, so a device that has not synced yet would be refused). Person
tables are read once per version and kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pydantic import ValidationError

from edge_app.gallery.bundle import MANIFEST, PERSONS, Manifest, PersonRow
from edge_app.match_event import MatchEvent
from sync_service.sources.interpol import notice_id
from sync_service.sources.namus import case_number
from sync_service.sources.records import SAFE_ID
from sync_service.store import Store, StoreError, open_store

# Case ids of sources we know nothing about still cannot carry text to a person.
_OTHER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEPT_VERSIONS = 8  # person tables in memory: the versions devices run today
SCOPES_REFRESH_SECONDS = 300.0


class UnknownCase(ValueError):
    """The event's person or case is not in the gallery it names; the message says why."""


def canonical_case_id(source: str, case_id: str) -> str:
    """One spelling per case, per source; raises ``ValueError`` for an id that is not one."""
    value = case_id.strip()
    if source == "namus":
        return f"MP{case_number(value)}"  # MP0990010, mp990010, 990010 -> MP990010
    if source == "interpol":
        return notice_id(value)
    if source == "fbi":
        if not SAFE_ID.match(value):
            raise ValueError(f"not an FBI uid: {case_id!r}")
        return value.lower()
    if not _OTHER_ID.match(value):
        raise ValueError(f"case id {case_id!r} has characters a case id cannot have")
    return value


@dataclass(frozen=True)
class GalleryPerson:
    """The cloud's row for the person an event names."""

    person_id: str
    display_name: str
    source: str
    case_id: str  # canonical


class PublishedGalleries:
    """Person tables of the published gallery versions, read from the gallery store."""

    def __init__(self, store: Store | str) -> None:
        self.store = open_store(store) if isinstance(store, str) else store
        self._tables: OrderedDict[str, dict[str, PersonRow]] = OrderedDict()
        self._lock = threading.Lock()
        self._scopes: tuple[float, list[str]] = (0.0, [])

    def _scope_prefixes(self) -> list[str]:
        """``scopes/<name>/`` of every gallery scope (listed at most every few minutes)."""
        listed_at, scopes = self._scopes
        if time.monotonic() - listed_at > SCOPES_REFRESH_SECONDS:
            names = {key.split("/")[1] for key in self.store.list_keys("scopes/") if key.count("/") >= 2}
            scopes = [f"scopes/{name}/" for name in sorted(names)]
            self._scopes = (time.monotonic(), scopes)
        return scopes

    def persons(self, version: str) -> dict[str, PersonRow]:
        """person_id -> row of ``version``; raises ``UnknownCase`` when the version was never published."""
        with self._lock:
            if version in self._tables:
                self._tables.move_to_end(version)
                return self._tables[version]
        if not _VERSION.match(version):
            raise UnknownCase(f"gallery version {version!r} is not a version name")
        table = self._read(version)
        with self._lock:
            self._tables[version] = table
            while len(self._tables) > KEPT_VERSIONS:
                self._tables.popitem(last=False)
        return table

    def _read(self, version: str) -> dict[str, PersonRow]:
        for prefix in ["", *self._scope_prefixes()]:
            prefix = f"{prefix}{version}/full/"
            manifest_bytes = self.store.read_bytes(prefix + MANIFEST)
            if manifest_bytes is not None:
                break
        else:
            raise UnknownCase(f"gallery version {version!r} was not published (or is past the retention)")
        try:
            manifest = Manifest.model_validate_json(manifest_bytes)
            entry = manifest.files[PERSONS]
        except (ValidationError, KeyError) as error:
            raise StoreError(f"{self.store.url}/{prefix}{MANIFEST} is not a bundle manifest: {error}") from None
        data = self.store.read_bytes(prefix + PERSONS)
        if data is None or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise StoreError(f"{self.store.url}/{prefix}{PERSONS} is missing or does not match its manifest")
        rows = [PersonRow.model_validate(row) for row in json.loads(data)]
        return {row.person_id: row for row in rows}

    def person(self, event: MatchEvent) -> GalleryPerson:
        """The cloud's row for ``event``; raises ``UnknownCase`` if the claim does not hold."""
        row = self.persons(event.gallery_version).get(event.person_id)
        if row is None:
            raise UnknownCase(f"person {event.person_id!r} is not in gallery version {event.gallery_version!r}")
        try:
            claimed = canonical_case_id(event.source, event.case_id)
            ours = canonical_case_id(row.source, row.case_id or row.person_id)
        except ValueError as error:
            raise UnknownCase(str(error)) from None
        if row.source != event.source or claimed != ours:
            raise UnknownCase(
                f"gallery version {event.gallery_version!r} has {event.person_id!r} as {row.source} {ours}, "
                f"not {event.source} {claimed}"
            )
        return GalleryPerson(row.person_id, row.display_name, row.source, ours)
