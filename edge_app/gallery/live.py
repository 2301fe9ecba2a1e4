"""The gallery the running pipeline searches, swappable from another thread.

The frame loop calls ``current()`` once per frame and uses that object for the whole
frame; the sync agent builds the new ``Gallery`` in its own thread (the slow part) and
then ``swap`` replaces one reference. Reading a reference is atomic in Python, so the
frame loop never waits on a lock and no frame is dropped or half-searched during a swap.
"""

from __future__ import annotations

import logging
import threading

from edge_app.gallery.bundle import BundleContents, BundleError, ModelRef
from edge_app.gallery.gallery import Gallery

log = logging.getLogger(__name__)


class LiveGallery:
    def __init__(self, gallery: Gallery, embedder: ModelRef | dict | None = None) -> None:
        """``embedder``: the model the device embeds with; a gallery from another model is refused."""
        if isinstance(embedder, dict):
            embedder = ModelRef(**embedder)
        self.embedder = embedder
        self._check(gallery)
        self._gallery = gallery
        self._swap_lock = threading.Lock()  # serialises writers only; readers never take it
        self.swaps = 0

    def current(self) -> Gallery:
        return self._gallery

    @property
    def version(self) -> str:
        return self._gallery.version

    def swap(self, gallery: Gallery) -> Gallery:
        """Make ``gallery`` current; returns the previous one. Raises BundleError if incompatible."""
        self._check(gallery)
        with self._swap_lock:
            previous, self._gallery = self._gallery, gallery
            self.swaps += 1
        log.info("gallery swapped: %s -> %s (%d persons)", previous.version, gallery.version, len(gallery))
        return previous

    def swap_bundle(self, contents: BundleContents) -> Gallery:
        """Build a Gallery from a verified bundle (in the caller's thread) and swap it in.
        Fits the sync agent's ``on_swap`` callback."""
        return self.swap(Gallery.from_bundle(contents))

    def _check(self, gallery: Gallery) -> None:
        if self.embedder is None:
            return
        if gallery.embedder.id != self.embedder.id or gallery.embedder.sha256 != self.embedder.sha256:
            raise BundleError(
                f"gallery {gallery.version} was built with embedder {gallery.embedder.id} "
                f"({gallery.embedder.sha256[:12]}), the device runs {self.embedder.id} ({self.embedder.sha256[:12]})"
            )
