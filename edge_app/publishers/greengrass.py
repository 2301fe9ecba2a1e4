"""Greengrass v2: publish to IoT Core through the nucleus (IPC ``PublishToIoTCore``).

The nucleus owns the MQTT connection and spools QoS 1 messages while offline, but its
spool is small and in memory by default, and rejects new messages when full
(docs/greengrass.md, DiskSpooler), so events still go through our durable outbox first.
The component's recipe must allow ``aws.greengrass#PublishToIoTCore`` on
``mpd/{iot:thingName}/match`` and ``.../health``.
"""

from __future__ import annotations

import concurrent.futures

from edge_app.publishers import PublishError


class GreengrassPublisher:
    name = "greengrass"

    def __init__(self, ipc_client=None, timeout_s: float = 10.0) -> None:
        """``ipc_client``: a ``GreengrassCoreIPCClientV2``; made from the nucleus environment if None."""
        if ipc_client is None:
            from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

            try:
                ipc_client = GreengrassCoreIPCClientV2()
            except KeyError as error:
                raise PublishError(
                    f"greengrass: not running inside a Greengrass v2 component ({error.args[0]} is not set)"
                ) from None
            except Exception as error:  # the IPC socket refused us
                raise PublishError(f"greengrass: cannot connect to the nucleus IPC socket: {error}") from None
        self._ipc = ipc_client
        self.timeout_s = timeout_s

    def publish(self, topic: str, payload: str, key: str) -> None:
        from awsiot.greengrasscoreipc.model import QOS

        try:
            future = self._ipc.publish_to_iot_core_async(
                topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=payload.encode()
            )
            future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            raise PublishError(f"greengrass: no answer from the nucleus within {self.timeout_s} s") from None
        except Exception as error:  # ServiceError, UnauthorizedError, a closed IPC connection...
            detail = getattr(error, "message", None) or str(error)  # IPC model errors keep it in .message
            raise PublishError(f"greengrass: PublishToIoTCore failed: {type(error).__name__}: {detail}") from None

    def close(self) -> None:
        close = getattr(self._ipc, "close", None)
        if close is not None:
            close()
