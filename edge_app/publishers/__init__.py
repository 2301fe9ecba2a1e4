"""Publishers send one message to the uplink and return only once it is acknowledged.

Every publisher has the same small interface (``Publisher``); the outbox sender calls
``publish`` and marks an event sent only after it returns. ``PublishError`` means "not
delivered, try again later" (uplink down, no acknowledgement in time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from edge_app.config import EdgeConfig


class PublishError(Exception):
    """The message was not acknowledged; the caller keeps it and retries."""


class Publisher(Protocol):
    name: str

    def publish(self, topic: str, payload: str, key: str) -> None:
        """Deliver ``payload`` on ``topic``; ``key`` (the event id) identifies it across retries."""

    def close(self) -> None: ...


def make_publisher(config: EdgeConfig) -> Publisher:
    """The publisher the configuration names (imports only what it needs)."""
    if config.publisher == "stdout":
        from edge_app.publishers.local import StdoutPublisher

        return StdoutPublisher()
    if config.publisher == "file":
        from edge_app.publishers.local import FilePublisher

        return FilePublisher(config.file_path)
    if config.publisher == "mqtt":
        from edge_app.publishers.mqtt import MqttPublisher

        return MqttPublisher.from_config(config)
    if config.publisher == "greengrass":
        from edge_app.publishers.greengrass import GreengrassPublisher

        return GreengrassPublisher()
    raise ValueError(f"unknown publisher {config.publisher!r}")
