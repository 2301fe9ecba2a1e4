"""Gallery scopes: which cases a regional (or agency) gallery holds, and where its files live.

The default scope "all" keeps today's layout (build output under ``gallery/``, the pointer
at the published root), so a device that names no scope is served as before. A named
scope lives under ``gallery/scopes/<name>/`` in the build output and ``scopes/<name>/``
under the published root, with its own versions, deltas, pointer and threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_app.gallery.pointer import announce_topic, scope_prefix  # noqa: F401  (the device's definitions)
from sync_service.cycle.config import DEFAULT_SCOPE, ScopeSettings
from sync_service.sources.namus import NAMUS_STATES
from sync_service.store import StoredCase

US_SOURCES = {"namus", "fbi"}  # cases of US agencies; Interpol records carry their own country
_STATE_BY_LABEL = {label.lower(): name for name, code in NAMUS_STATES for label in (name, code)}


def state_name(label: str) -> str:
    """The NamUs state name for a name or a code ("tx" -> "Texas"); unknown labels pass through."""
    return _STATE_BY_LABEL.get(label.strip().lower(), label.strip())


def build_prefix(scope: str) -> str:
    """Where a scope's build record and bundles live in the (private) build output."""
    return "gallery/" if scope == DEFAULT_SCOPE else f"gallery/scopes/{scope}/"


def published_prefix(scope: str) -> str:
    """A scope's gallery root relative to the published root (what its devices sync from)."""
    return scope_prefix(scope)


@dataclass(frozen=True)
class ScopeFilter:
    name: str
    states: frozenset[str]  # lower-case NamUs state names
    countries: frozenset[str]
    sources: frozenset[str]

    @classmethod
    def of(cls, settings: ScopeSettings) -> ScopeFilter:
        return cls(
            settings.name,
            frozenset(state_name(s).lower() for s in settings.states),
            frozenset(settings.countries),
            frozenset(settings.sources),
        )

    def matches(self, case: StoredCase) -> bool:
        """Every non-empty filter must hold: agency, country, and (for NamUs cases) state."""
        record = case.record
        if self.sources and record.source not in self.sources:
            return False
        if self.countries:
            country = "US" if record.source in US_SOURCES else record.country
            if country not in self.countries:
                return False
        if self.states:
            # A state filter selects NamUs cases by the states they are listed in; cases of
            # sources without states pass only when the scope names those sources explicitly.
            if record.source == "namus":
                return bool({s.lower() for s in case.scopes} & self.states)
            return record.source in self.sources
        return True
