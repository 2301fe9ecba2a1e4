"""Which camera the frame loop serves next: cameras deciding about a face first, then the rest.

On a device that keeps up, every frame of every camera is processed and the order does not
matter. Under overload (every camera needing detection at once, e.g. one person seen by all
of them) plain round robin comes back to each camera less often than
``recognition.track_timeout_s``: each look at a face starts a new track, no track collects
its votes, and nobody is confirmed anywhere. So:

- cameras with a *deciding* track (unconfirmed, still collecting its first window of votes:
  ``Track.deciding``) are served first, round robin among themselves: the longest waiting
  ones, as many at a time ("in focus") as the loop can come back to every ``track_timeout_s / REVISITS_PER_TIMEOUT``.
  That number adapts to the load, measured on the cameras' own frame clocks: a focused
  camera that lost frames and was come back to later than that lowers it to what fits, one
  come back to well within it raises it by one;
- the other cameras get the time left, least recently served first (round robin), and at
  least one frame after each round of the focus (``FOCUS_STREAK`` frames or more), so a face
  appearing elsewhere is found;
- a camera stays in focus at most ``FOCUS_TURN_S`` of its own time and then goes to the
  back of the queue, so a face that never decides cannot hold the device.

People are then confirmed one camera after another instead of nowhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from edge_app.pipeline.capture import Frame

REVISITS_PER_TIMEOUT = 4  # a focused track is looked at about this often per track_timeout_s
FOCUS_TURN_S = 2.0  # longest stay in focus (the camera's own seconds) before going to the back
INITIAL_FOCUS = 4
# Frames in a row the focus may take before one goes to the other cameras. Each of those costs
# a detection that, under overload, rarely leads anywhere; fewer would leave less for the focus.
FOCUS_STREAK = 4


class FrameFeed(Protocol):
    """What the scheduler needs of a capture."""

    camera_id: str

    def take(self, timeout: float) -> Frame | None: ...

    @property
    def exhausted(self) -> bool: ...


@dataclass
class _Camera:
    waiting_since: int | None = None  # hand-out count when the camera began deciding (queue order)
    turn_started: float | None = None  # its frame clock when its current stay in focus began
    handed_focused: bool = False  # its last frame was handed out while it was in focus...
    focused_with: int = 0  # ...together with this many cameras
    last_focused: bool = False  # the frame before that, too
    last_clock: float | None = None
    last_index: int = -1
    last_served: int = -1  # hand-out count of its last frame (round robin order)


class FrameScheduler:
    """Hands out frames: ``next_frame`` (the loop's reader) and ``processed`` (after each frame)
    may run in different threads."""

    def __init__(self, focus: int = INITIAL_FOCUS) -> None:
        self.focus = focus  # at most this many deciding cameras are served first
        self._cameras: dict[str, _Camera] = {}
        self._handed = 0
        self._focus_streak = 0  # frames handed to focused cameras in a row
        self._lock = threading.Lock()

    def next_frame(self, captures: list[FrameFeed]) -> tuple[Frame | None, list[FrameFeed]]:
        """The next frame to process (None: no camera has a new one) and the captures found exhausted."""
        with self._lock:
            states = {capture.camera_id: self._state(capture.camera_id) for capture in captures}
            waiting = sorted(
                (s.waiting_since, camera_id) for camera_id, s in states.items() if s.waiting_since is not None
            )
            focus = [camera_id for _, camera_id in waiting[: self.focus]]
            # After a round of the focus (at least FOCUS_STREAK frames) one for the rest, so a face
            # appearing on another camera is found even while the focus could take all the time.
            rest_first = self._focus_streak >= max(FOCUS_STREAK, len(focus))
        # Round robin (least recently served first) within the focus and within the rest.
        order = sorted(captures, key=lambda c: ((c.camera_id in focus) == rest_first, states[c.camera_id].last_served))
        exhausted = []
        for capture in order:
            frame = capture.take(0.0)
            if frame is not None:
                with self._lock:
                    self._handed += 1
                    state = states[capture.camera_id]
                    state.last_served = self._handed
                    state.handed_focused = capture.camera_id in focus
                    self._focus_streak = self._focus_streak + 1 if state.handed_focused else 0
                    state.focused_with = len(focus)
                return frame, exhausted
            if capture.exhausted:
                exhausted.append(capture)
        return None, exhausted

    def processed(self, frame: Frame, deciding: bool, track_timeout_s: float) -> None:
        """After ``frame`` was processed: whether its camera now has a deciding track."""
        revisit_s = track_timeout_s / REVISITS_PER_TIMEOUT
        with self._lock:
            state = self._state(frame.camera_id)
            if state.handed_focused and state.last_focused and state.last_clock is not None:
                gap = frame.clock - state.last_clock
                if frame.index - state.last_index > 1 and gap > revisit_s:  # frames lost: the loop came back late
                    self.focus = max(1, min(self.focus, int(state.focused_with * revisit_s / gap)))
                elif gap <= revisit_s / 2:
                    self.focus = min(self.focus + 1, len(self._cameras))
            state.last_clock, state.last_index, state.last_focused = frame.clock, frame.index, state.handed_focused
            if not deciding:
                state.waiting_since = state.turn_started = None
                return
            if state.waiting_since is None:
                state.waiting_since = self._handed
            if not state.handed_focused:
                state.turn_started = None
            elif state.turn_started is None:
                state.turn_started = frame.clock
            elif frame.clock - state.turn_started > FOCUS_TURN_S:
                state.waiting_since, state.turn_started = self._handed, None

    def forget(self, camera_id: str) -> None:
        with self._lock:
            self._cameras.pop(camera_id, None)

    def _state(self, camera_id: str) -> _Camera:
        state = self._cameras.get(camera_id)
        if state is None:
            state = self._cameras[camera_id] = _Camera()
        return state
