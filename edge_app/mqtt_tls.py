"""The one mutual-TLS MQTT client set-up (AWS IoT Core, or mosquitto standing in for it).

Every MQTT connection in the project (the device's publisher, its gallery announcement
listener, the cloud's gallery announcer and the local rule engine) is made here, so they
all verify the broker the same way: the CA file, the broker's hostname, TLS 1.2 or newer,
and a client certificate that proves who we are.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class MqttTlsError(ValueError):
    """The CA, certificate or key cannot be loaded (missing, unreadable, or not a matching pair)."""


def tls_context(ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """Verify the broker against ``ca`` (certificate and hostname); present ``cert``/``key``."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as error:
        raise MqttTlsError(f"mqtt: cannot load TLS files (ca={ca}, cert={cert}, key={key}): {error}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # what IoT Core accepts; never older
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def mutual_tls_client(
    client_id: str,
    ca: str | Path,
    cert: str | Path,
    key: str | Path,
    *,
    clean_session: bool = True,
    reconnect_delay: tuple[int, int] = (1, 60),
) -> paho.Client:
    """A paho 2.x MQTT 3.1.1 client ready to ``connect``; raises ``MqttTlsError`` for bad TLS files.

    ``reconnect_delay``: paho's automatic reconnect backoff (seconds, doubling from the first
    to the second) once the network loop runs.
    """
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=clean_session
    )
    client.tls_set_context(tls_context(ca, cert, key))
    client.reconnect_delay_set(min_delay=reconnect_delay[0], max_delay=reconnect_delay[1])
    return client
