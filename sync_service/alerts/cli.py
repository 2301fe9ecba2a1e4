"""``mpd cloud``: the alert path on one machine (``mpd cloud serve``, ``mpd cloud sms``)."""

from __future__ import annotations

import json
import signal
import threading

import click


@click.group("cloud")
def cloud_group() -> None:
    """Run the cloud alert path locally (mosquitto + moto, or files only)."""


@cloud_group.command("serve")
@click.option("--mqtt-host", envvar="MPD_MQTT_HOST", default="127.0.0.1", show_default=True)
@click.option("--mqtt-port", envvar="MPD_MQTT_PORT", type=int, default=8883, show_default=True)
@click.option("--ca", envvar="MPD_MQTT_CA", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--cert", envvar="MPD_MQTT_CERT", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--key", envvar="MPD_MQTT_KEY", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--client-id", default="mpd-cloud-rule", show_default=True)
@click.option(
    "--create-tables/--no-create-tables",
    default=True,
    show_default=True,
    help="With an AWS endpoint (moto), create the alert tables if missing.",
)
def serve_command(
    mqtt_host: str, mqtt_port: int, ca: str, cert: str, key: str, client_id: str, create_tables: bool
) -> None:
    """Apply the IoT rule to MQTT messages and run the alert handler in-process.

    AWS backend when AWS_ENDPOINT_URL is set (moto) or MPD_ALERT_BACKEND=aws; otherwise
    SQLite tables and an SMS file sink under MPD_ALERT_DIR (default .mpd/cloud).
    """
    import os

    from sync_service.alerts.config import AlertSettings
    from sync_service.alerts.handler import build_service
    from sync_service.alerts.local import LocalRuleEngine, MqttSettings, create_aws_resources

    try:
        settings = AlertSettings.from_env()
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if settings.backend == "aws" and create_tables and os.environ.get("AWS_ENDPOINT_URL"):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            create_aws_resources(settings)
        except (BotoCoreError, ClientError) as error:
            endpoint = os.environ["AWS_ENDPOINT_URL"]
            raise click.ClickException(f"cannot create the alert tables at {endpoint}: {error}") from None
    try:
        service = build_service(settings)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    try:
        engine = LocalRuleEngine(
            service,
            MqttSettings(mqtt_host, mqtt_port, ca, cert, key, client_id),
            on_decision=lambda result: click.echo(json.dumps(result, default=str)),
            dead_letter=settings.local_dir / "failed-events.jsonl",
        )
    except ValueError as error:  # edge_app.mqtt_tls.MqttTlsError: unreadable TLS files
        raise click.UsageError(str(error)) from None
    try:
        engine.start()
    except ConnectionError as error:
        raise click.ClickException(str(error)) from None
    where = settings.sms_sink if settings.backend == "local" else "SNS"
    click.echo(f"listening on {engine.rule.topic_filter} at {mqtt_host}:{mqtt_port}; SMS to {where}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    engine.stop()


@cloud_group.command("sms")
def sms_command() -> None:
    """List sent SMS: moto's record (with AWS_ENDPOINT_URL) or the local sink file."""
    import os

    from sync_service.alerts.config import AlertSettings
    from sync_service.alerts.stores import read_sms_sink

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        import requests

        try:
            response = requests.get(f"{endpoint.rstrip('/')}/moto-api/data.json", timeout=10)
            response.raise_for_status()
        except requests.RequestException as error:
            raise click.ClickException(f"cannot read SMS from moto at {endpoint}: {error}") from None
        messages = response.json().get("sns", {}).get("SMS", [])
    else:
        messages = read_sms_sink(AlertSettings.from_env().sms_sink)
    for message in messages:
        click.echo(json.dumps(message))


@cloud_group.command("replay")
def replay_command() -> None:
    """Hand events parked in $MPD_ALERT_DIR/failed-events.jsonl to the handler again.

    Those still failing stay parked; duplicates of already handled events cannot text twice.
    """
    import os
    import tempfile

    from sync_service.alerts.config import AlertSettings
    from sync_service.alerts.handler import build_service

    try:
        settings = AlertSettings.from_env()
        service = build_service(settings)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    parked = settings.local_dir / "failed-events.jsonl"
    if not parked.exists():
        click.echo(f"nothing parked in {parked}")
        return
    still_failing = []
    for number, line in enumerate(parked.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            result = service.handle(record["event"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            click.echo(f"line {number}: not a parked event ({error}); kept", err=True)
            still_failing.append(line)
            continue
        except Exception as error:  # the cloud is still down: keep it for the next replay
            click.echo(f"line {number}: still failing: {error!r}", err=True)
            still_failing.append(line)
            continue
        click.echo(json.dumps(result, default=str))
    # Rewrite atomically: a crash here must not lose the events still parked.
    with tempfile.NamedTemporaryFile("w", dir=parked.parent, delete=False) as rest:
        rest.write("".join(line + "\n" for line in still_failing))
        rest.flush()
        os.fsync(rest.fileno())
    os.replace(rest.name, parked)
    if still_failing:
        raise click.ClickException(f"{len(still_failing)} event(s) still parked in {parked}")


def _add_cycle_commands() -> None:
    from sync_service.cycle.cli import cycle_command

    cloud_group.add_command(cycle_command)


_add_cycle_commands()
