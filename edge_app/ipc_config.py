"""The Greengrass component configuration of a running device, over IPC.

At start the device reads its component configuration (``GetConfiguration``) and merges
it into its own configuration (``edge_app.config.load_config(component_config=...)``).
While it runs, a deployment that changes the configuration arrives twice:

1. ``SubscribeToValidateConfigurationUpdates``: the proposed configuration, before the
   nucleus applies it. We validate it against the running configuration and answer with
   ``SendConfigurationValidityReport``: ACCEPTED, or REJECTED with a message naming each
   bad key and value. A rejected configuration fails the deployment, which then rolls
   back (``failureHandlingPolicy: ROLLBACK``), and the device keeps running unchanged.
2. ``SubscribeToConfigurationUpdate``: the configuration changed. We read it again and
   apply it to the running pipeline (thresholds, confirmation, cooldown, camera list).
   If it is invalid after all (validation timed out and the deployment went ahead), the
   running configuration stays and the error is logged.

The component configuration also holds keys that are not the device model's: the
nucleus's ``accessControl``, and ``gallery`` (source, public key, poll interval), which
the component's Run step reads through recipe variables, so a change to it restarts the
component. ``gallery`` is still checked here, so a deployment with an unreadable public
key or an unknown source is rejected instead of breaking the device. Numbers arrive as
strings (recipe convention); the pydantic device model parses them.

``mpd edge run`` keeps itself in step in process: ``attach_to_runner(runner)`` applies
updates to the running ``EdgeRunner`` through ``runner.apply_update`` (no restart). It
fails with a clear message outside Greengrass.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from edge_app.gallery.pointer import SCOPE_PATTERN

log = logging.getLogger(__name__)

# Keys of our component configuration that the device model does not know: the nucleus
# reads accessControl, the Run step reads gallery.
GREENGRASS_ONLY_KEYS = frozenset({"accessControl", "gallery"})
# Environment every Greengrass v2 component process gets from the nucleus.
NUCLEUS_ENV = ("SVCUID", "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")


class IpcConfigError(RuntimeError):
    """The component configuration could not be read over IPC."""


def running_under_greengrass() -> bool:
    return all(os.environ.get(name) for name in NUCLEUS_ENV)


def device_part(configuration: Mapping[str, Any] | None) -> dict[str, Any]:
    """The component configuration without the keys that are not the device model's."""
    return {key: value for key, value in (configuration or {}).items() if key not in GREENGRASS_ONLY_KEYS}


def check_gallery_settings(gallery: Any) -> None:
    """Raise ``ValueError`` naming the bad ``gallery.*`` key and value (a missing block is fine)."""
    if gallery is None:
        return
    if not isinstance(gallery, Mapping):
        raise ValueError(f"gallery = {gallery!r}: must be a mapping of source, public_key_pem, interval_s, scope")
    unknown = sorted(set(gallery) - {"source", "public_key_pem", "interval_s", "scope"})
    if unknown:
        raise ValueError(f"gallery.{unknown[0]}: unknown key")
    scope = gallery.get("scope", "")
    if not isinstance(scope, str) or (scope and not re.match(SCOPE_PATTERN, scope)):
        raise ValueError(f"gallery.scope = {scope!r}: a scope name the cloud configuration defines (a-z, 0-9, -)")
    source = gallery.get("source", "")
    if not isinstance(source, str) or ("://" in source and not source.startswith(("s3://", "http://", "https://"))):
        raise ValueError(f"gallery.source = {source!r}: use a folder, http(s):// or s3:// location")
    interval = gallery.get("interval_s", "3600")
    try:
        if float(interval) < 60:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"gallery.interval_s = {interval!r}: a number of seconds, at least 60") from None
    pem = gallery.get("public_key_pem", "")
    if pem:
        from edge_app.gallery.bundle import BundleError
        from edge_app.gallery.install import load_public_key

        try:
            load_public_key(pem.encode() if isinstance(pem, str) else pem)
        except (BundleError, AttributeError) as error:
            raise ValueError(f"gallery.public_key_pem: {error}") from None


class ComponentConfiguration:
    """Reads the component configuration and keeps a running pipeline in step with it.

    ``ipc`` is a ``GreengrassCoreIPCClientV2``. ``validate(update)`` returns normally for
    a valid configuration and raises ``ValueError`` (``edge_app.config.ConfigError``)
    naming the bad key and value otherwise; ``apply(update)`` applies it (and may raise
    the same). Both take the device part of the whole component configuration.
    """

    def __init__(self, ipc, *, timeout_s: float = 10.0) -> None:
        self._ipc = ipc
        self.timeout_s = timeout_s
        self._validate: Callable[[dict[str, Any]], Any] | None = None
        self._apply: Callable[[dict[str, Any]], Any] | None = None
        self._operations: list[Any] = []
        self._lock = threading.Lock()  # IPC callbacks run on executor threads: apply one at a time
        self._applied: dict[str, Any] | None = None
        self.accepted = 0
        self.rejected = 0
        self.last_error: str | None = None

    @classmethod
    def connect(cls, timeout_s: float = 10.0) -> ComponentConfiguration:
        """Connect to the nucleus from inside a component; ``IpcConfigError`` elsewhere."""
        if not running_under_greengrass():
            missing = [name for name in NUCLEUS_ENV if not os.environ.get(name)]
            raise IpcConfigError(f"not running as a Greengrass v2 component ({', '.join(missing)} not set)")
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

        try:
            return cls(GreengrassCoreIPCClientV2(), timeout_s=timeout_s)
        except Exception as error:  # the socket refused us: wrong SVCUID, nucleus stopping
            raise IpcConfigError(f"cannot connect to the nucleus IPC socket: {error}") from None

    def read(self) -> dict[str, Any]:
        """The device part of the current component configuration."""
        try:
            future = self._ipc.get_configuration_async(key_path=[])
            value = future.result(timeout=self.timeout_s).value
        except Exception as error:  # ServiceError, ResourceNotFoundError, a closed connection
            detail = getattr(error, "message", None) or str(error) or type(error).__name__
            raise IpcConfigError(f"GetConfiguration failed: {detail}") from None
        if value is not None and not isinstance(value, Mapping):
            raise IpcConfigError(f"GetConfiguration returned {type(value).__name__}, not a mapping")
        return device_part(value)

    def watch(
        self,
        validate: Callable[[dict[str, Any]], Any],
        apply: Callable[[dict[str, Any]], Any],
        current: Mapping[str, Any] | None = None,
    ) -> None:
        """Answer validation requests and apply configuration updates from now on.

        ``current``: the configuration already running (from ``read()``), so an update
        event that changes nothing of ours does not re-apply it.
        """
        self._validate, self._apply = validate, apply
        self._applied = dict(current) if current is not None else None
        _, validate_op = self._ipc.subscribe_to_validate_configuration_updates(
            on_stream_event=self._on_validate, on_stream_error=self._on_stream_error
        )
        _, update_op = self._ipc.subscribe_to_configuration_update(
            key_path=[], on_stream_event=self._on_update, on_stream_error=self._on_stream_error
        )
        self._operations = [validate_op, update_op]

    def close(self) -> None:
        for operation in self._operations:
            try:
                operation.close()
            except Exception as error:  # closing during nucleus shutdown may fail; nothing to keep
                log.debug("closing IPC subscription: %s", error)
        self._operations = []
        self._ipc.close()

    # --- IPC callbacks (executor threads) -------------------------------------------------

    def _on_validate(self, events) -> None:
        from awsiot.greengrasscoreipc.model import ConfigurationValidityReport, ConfigurationValidityStatus

        event = events.validate_configuration_update_event
        deployment_id = event.deployment_id
        try:
            if not isinstance(event.configuration, Mapping):
                raise ValueError(f"configuration is {type(event.configuration).__name__}, not a mapping")
            check_gallery_settings(event.configuration.get("gallery"))
            with self._lock:
                self._validate(device_part(event.configuration))
        except Exception as error:  # ConfigError and anything a broken payload raises
            status, message = ConfigurationValidityStatus.REJECTED, str(error) or type(error).__name__
            self.rejected += 1
            self.last_error = message
            log.warning("deployment %s: configuration rejected: %s", deployment_id, message)
        else:
            status, message = ConfigurationValidityStatus.ACCEPTED, None
            self.accepted += 1
            log.info("deployment %s: configuration accepted", deployment_id)
        report = ConfigurationValidityReport(status=status, deployment_id=deployment_id, message=message)
        try:
            self._ipc.send_configuration_validity_report_async(configuration_validity_report=report).result(
                timeout=self.timeout_s
            )
        except Exception as error:  # the deployment then times out and proceeds; say so
            log.error("deployment %s: could not send the validity report: %s", deployment_id, error)

    def _on_update(self, events) -> None:
        key_path = events.configuration_update_event.key_path or []
        if key_path and key_path[0] in GREENGRASS_ONLY_KEYS:
            return
        try:
            configuration = self.read()
        except IpcConfigError as error:
            self.last_error = str(error)
            log.error("configuration update: %s; keeping the running configuration", error)
            return
        with self._lock:
            # One deployment sends an event per changed key: apply each new configuration once.
            if configuration == self._applied:
                return
            try:
                self._apply(configuration)
            except Exception as error:
                self.last_error = str(error)
                log.error("configuration update not applied, keeping the running configuration: %s", error)
                return
            self._applied = configuration
        log.info("configuration update applied (changed: %s)", "/".join(key_path) or "all")

    def _on_stream_error(self, error: Exception) -> bool:
        log.error("IPC configuration stream error: %s", error)
        return False  # keep the subscription open


def attach_to_runner(runner, component: ComponentConfiguration | None = None) -> ComponentConfiguration:
    """Keep an ``EdgeRunner`` in step with the component configuration.

    Validation checks an update against the runner's current configuration without
    changing it; applying goes through ``runner.apply_update``, which swaps thresholds
    and cameras in the running pipeline. ``component``: the connection the configuration
    was read from at start (default: connect now).
    """
    from edge_app.config import apply_update

    component = component or ComponentConfiguration.connect()
    component.watch(
        validate=lambda update: apply_update(runner.config, update),
        apply=runner.apply_update,
        current=component.read(),
    )
    return component
