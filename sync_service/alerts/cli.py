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
@click.option("--fleet/--no-fleet", default=True, show_default=True,
              help="Also take mpd/+/health into per-device state (`mpd fleet status`).")  # fmt: skip
@click.option("--cycle-config", type=click.Path(exists=True, dir_okay=False),
              help="Also run the nightly cycle on its schedule with this configuration.")  # fmt: skip
@click.option("--clock-speed", type=click.FloatRange(min=1.0), default=1.0, show_default=True,
              help="Run the cycle's clock this many times faster than real time (3600: a night per 24 s).")  # fmt: skip
@click.option("--cycle-now", is_flag=True, help="Run a first cycle at once instead of waiting for 03:00 UTC.")
@click.option("--review-host", default="127.0.0.1", show_default=True, help="Address of the review page.")
@click.option(
    "--review-port", type=int, default=8080, show_default=True, help="Port of the review page (0: any free one)."
)
@click.option("--review/--no-review", "serve_review", default=True, show_default=True, help="Serve the review page.")
@click.option(
    "--sweep-seconds", type=float, default=30.0, show_default=True, help="How often to escalate/expire/retry."
)
def serve_command(
    mqtt_host: str,
    mqtt_port: int,
    ca: str,
    cert: str,
    key: str,
    client_id: str,
    create_tables: bool,
    fleet: bool,
    cycle_config: str | None,
    clock_speed: float,
    cycle_now: bool,
    review_host: str,
    review_port: int,
    serve_review: bool,
    sweep_seconds: float,
) -> None:
    """Apply the IoT rules to MQTT messages (alerts, fleet health) and run the handlers in-process,
    serve the review page (the same app as the review Lambda) with its escalation sweep, and
    optionally the nightly cycle on a clock that can run faster than real time.

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
    page = None
    if serve_review:
        from sync_service.review.app import build_app
        from sync_service.review.server import ReviewServer

        try:
            page = ReviewServer(build_app(settings, service.review), review_host, review_port)
        except (OSError, ValueError) as error:
            raise click.ClickException(
                f"cannot serve the review page on {review_host}:{review_port}: {error}"
            ) from None
        page.start()
        click.echo(
            f"review page at http://{review_host}:{page.port}/ (links in messages: {settings.review_url})", err=True
        )
    try:
        engine.start()
    except ConnectionError as error:
        raise click.ClickException(str(error)) from None
    extras = []
    if fleet:
        extras.append(_start_fleet(settings, mqtt_host, mqtt_port, ca, cert, key, client_id))
    if cycle_config:
        extras.append(_start_cycle(cycle_config, clock_speed, cycle_now))
    # Last, once everything is up: scripts and tests wait for this line.
    where = settings.sms_sink if settings.backend == "local" else "SNS"
    click.echo(f"listening on {engine.rule.topic_filter} at {mqtt_host}:{mqtt_port}; SMS to {where}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(sweep_seconds):
        try:
            service.review.sweep()
        except Exception as error:  # a store hiccup must not stop the alert path
            click.echo(f"sweep failed: {error!r}", err=True)
    for extra in extras:
        extra.stop()
    engine.stop()
    if page is not None:
        page.stop()


def _start_fleet(settings, host: str, port: int, ca: str, cert: str, key: str, client_id: str):
    import os

    from sync_service.fleet.local import HealthRuleEngine
    from sync_service.fleet.stores import create_device_table, open_device_store

    env = dict(os.environ)
    if settings.backend == "aws":
        env.setdefault("MPD_DEVICE_TABLE", "mpd-devices")
        if os.environ.get("AWS_ENDPOINT_URL"):
            create_device_table(env["MPD_DEVICE_TABLE"])
    else:
        env["MPD_ALERT_DIR"] = str(settings.local_dir)
    engine = HealthRuleEngine(open_device_store(env), host, port, ca, cert, key, client_id=f"{client_id}-health")
    try:
        engine.start()
    except ConnectionError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"listening on {engine.rule.topic_filter}; device state for `mpd fleet status`", err=True)
    return engine


def _start_cycle(config_path: str, clock_speed: float, run_now: bool):
    from sync_service.cycle.config import CycleConfigError, load_cycle_config
    from sync_service.cycle.runner import CycleScheduler, SimulatedClock
    from sync_service.cycle.stages import announcer_for
    from sync_service.gallery.signing import SigningKeyError, load_private_key

    try:
        config = load_cycle_config(config_path)
        key = load_private_key()
    except (CycleConfigError, SigningKeyError) as error:
        raise click.ClickException(str(error)) from None
    scheduler = CycleScheduler(
        config, SimulatedClock(speed=clock_speed), run_now=run_now, key=key, announcer=announcer_for(config),
        on_result=lambda result: click.echo(json.dumps({"cycle": result["now"], **result["outcome"]})),
    )  # fmt: skip
    scheduler.start()
    click.echo(f"nightly cycle every {config.cycle_hours:g} h at 03:00 UTC, clock x{clock_speed:g}", err=True)
    return scheduler


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
    from sync_service.cycle.cli import cycle_command, package_command

    cloud_group.add_command(cycle_command)
    cloud_group.add_command(package_command)


_add_cycle_commands()
