"""Component configuration over Greengrass IPC: read at start, validate, apply, reject.

FAKE (the only one in the suite, and only because no Greengrass nucleus runs here: it
is not on any package registry this project can install from):
``FakeNucleusConnection`` stands in for the nucleus IPC socket, i.e. the low-level
``awsiot.greengrasscoreipc.client.GreengrassCoreIPCClient`` with the same ``new_*``
operation methods and ``activate``/``get_response``/``close`` operations. The real
``GreengrassCoreIPCClientV2`` from awsiotsdk is wrapped around it, so the SDK's own
request models, futures, stream-handler wrapping and executor dispatch all run for real.
Its ``deploy`` follows the nucleus: ask the validators, fail the deployment on REJECTED,
otherwise merge the configuration and send one update event per changed key.
"""

from __future__ import annotations

import concurrent.futures
import copy
import threading
import time

import pytest
from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from edge_app import ipc_config
from edge_app.config import apply_update, load_config
from edge_app.ipc_config import ComponentConfiguration, IpcConfigError
from greengrass import packaging

COMPONENT = packaging.COMPONENT_NAME


def _done(result=None) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(result)
    return future


def _merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _changed_paths(old: dict, new: dict, prefix: tuple = ()) -> list[list[str]]:
    paths = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            paths += _changed_paths(a, b, (*prefix, key))
        elif a != b:
            paths.append([*prefix, key])
    return paths


class _Operation:
    def __init__(self, nucleus: FakeNucleusConnection, name: str, stream_handler=None) -> None:
        self.nucleus, self.name, self.stream_handler = nucleus, name, stream_handler
        self._response: concurrent.futures.Future = concurrent.futures.Future()
        self.closed = False

    def activate(self, request) -> concurrent.futures.Future:
        try:
            self._response.set_result(self.nucleus.handle(self, request))
        except Exception as error:  # the nucleus answers an operation with an error shape
            self._response.set_exception(error)
        return _done()

    def get_response(self) -> concurrent.futures.Future:
        return self._response

    def close(self) -> concurrent.futures.Future:
        self.closed = True
        self.nucleus.subscriptions = [s for s in self.nucleus.subscriptions if s is not self]
        return _done()


class FakeNucleusConnection:
    """Stands in for the nucleus IPC socket (see the module docstring)."""

    def __init__(self, configuration: dict, component: str = COMPONENT) -> None:
        self.component = component
        self.configuration = copy.deepcopy(configuration)
        self.subscriptions: list[_Operation] = []
        self.reports: list[model.ConfigurationValidityReport] = []
        self.states: list[str] = []  # UpdateState requests, in order (the health gate's reports)
        self._report_arrived = threading.Event()
        self.fail_get_configuration: Exception | None = None
        self.closed = False

    # --- the client side: what GreengrassCoreIPCClient offers -----------------------------

    def new_get_configuration(self) -> _Operation:
        return _Operation(self, "GetConfiguration")

    def new_subscribe_to_configuration_update(self, stream_handler) -> _Operation:
        return _Operation(self, "SubscribeToConfigurationUpdate", stream_handler)

    def new_subscribe_to_validate_configuration_updates(self, stream_handler) -> _Operation:
        return _Operation(self, "SubscribeToValidateConfigurationUpdates", stream_handler)

    def new_send_configuration_validity_report(self) -> _Operation:
        return _Operation(self, "SendConfigurationValidityReport")

    def new_update_state(self) -> _Operation:
        return _Operation(self, "UpdateState")

    def close(self) -> concurrent.futures.Future:
        self.closed = True
        return _done()

    def handle(self, operation: _Operation, request):
        if operation.name == "GetConfiguration":
            assert isinstance(request, model.GetConfigurationRequest)
            if self.fail_get_configuration is not None:
                raise self.fail_get_configuration
            value = self.configuration
            for key in request.key_path or []:
                if not isinstance(value, dict) or key not in value:
                    raise model.ResourceNotFoundError(message=f"key not found: {request.key_path}")
                value = value[key]
            return model.GetConfigurationResponse(component_name=self.component, value=copy.deepcopy(value))
        if operation.name == "SubscribeToConfigurationUpdate":
            assert isinstance(request, model.SubscribeToConfigurationUpdateRequest)
            operation.key_path = request.key_path or []
            self.subscriptions.append(operation)
            return model.SubscribeToConfigurationUpdateResponse()
        if operation.name == "SubscribeToValidateConfigurationUpdates":
            self.subscriptions.append(operation)
            return model.SubscribeToValidateConfigurationUpdatesResponse()
        if operation.name == "SendConfigurationValidityReport":
            self.reports.append(request.configuration_validity_report)
            self._report_arrived.set()
            return model.SendConfigurationValidityReportResponse()
        if operation.name == "UpdateState":
            assert isinstance(request, model.UpdateStateRequest)
            self.states.append(request.state)
            return model.UpdateStateResponse()
        raise AssertionError(f"unexpected operation {operation.name}")

    # --- the nucleus side: a deployment that merges configuration -------------------------

    def _subscribers(self, name: str) -> list[_Operation]:
        return [s for s in self.subscriptions if s.name == name]

    def deploy(self, merge: dict, deployment_id: str, validate: bool = True, timeout: float = 10.0) -> str:
        proposed = _merge(self.configuration, merge)
        validators = self._subscribers("SubscribeToValidateConfigurationUpdates")
        if validate and validators:
            self._report_arrived.clear()
            event = model.ValidateConfigurationUpdateEvents(
                validate_configuration_update_event=model.ValidateConfigurationUpdateEvent(
                    configuration=copy.deepcopy(proposed), deployment_id=deployment_id
                )
            )
            for subscriber in validators:
                subscriber.stream_handler.on_stream_event(event)
            if not self._report_arrived.wait(timeout):
                raise AssertionError(f"no validity report for {deployment_id} within {timeout}s")
            report = self.reports[-1]
            assert report.deployment_id == deployment_id
            if report.status == model.ConfigurationValidityStatus.REJECTED:
                return "FAILED"
        changed = _changed_paths(self.configuration, proposed)
        self.configuration = proposed
        for path in changed:
            for subscriber in self._subscribers("SubscribeToConfigurationUpdate"):
                if path[: len(subscriber.key_path)] == subscriber.key_path:
                    subscriber.stream_handler.on_stream_event(
                        model.ConfigurationUpdateEvents(
                            configuration_update_event=model.ConfigurationUpdateEvent(
                                component_name=self.component, key_path=path
                            )
                        )
                    )
        return "SUCCEEDED"


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture()
def defaults() -> dict:
    """The component's DefaultConfiguration, exactly as the packager writes it."""
    recipe = packaging.render_recipe("1.0.0", "mpd-artifacts-test")
    return recipe["ComponentConfiguration"]["DefaultConfiguration"]


@pytest.fixture()
def nucleus(defaults) -> FakeNucleusConnection:
    return FakeNucleusConnection(defaults)


@pytest.fixture()
def ipc(nucleus):
    client = GreengrassCoreIPCClientV2(client=nucleus)  # the real SDK client over the fake socket
    yield client
    client.close()


class Applied:
    """Records what ComponentConfiguration hands to the pipeline (validation is the real one)."""

    def __init__(self, configuration: dict) -> None:
        self.config = load_config(component_config=configuration)
        self.calls: list[dict] = []
        self.done = threading.Event()

    def validate(self, update: dict) -> None:
        apply_update(self.config, update)

    def apply(self, update: dict) -> None:
        self.config = apply_update(self.config, update)
        self.calls.append(update)
        self.done.set()


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture()
def watched(ipc):
    component = ComponentConfiguration(ipc, timeout_s=5)
    current = component.read()
    target = Applied(current)
    component.watch(target.validate, target.apply, current=current)
    return component, target


# --- tests --------------------------------------------------------------------------------


def test_reads_the_recipe_defaults_at_start_without_the_nucleus_keys(ipc, defaults):
    configuration = ComponentConfiguration(ipc).read()
    # The nucleus's accessControl and the Run step's gallery block are not the device model's.
    assert configuration == {k: v for k, v in defaults.items() if k not in ("accessControl", "gallery")}
    config = load_config(component_config=configuration)
    assert config.publisher == "greengrass"
    assert config.recognition.cooldown_s == float(defaults["recognition"]["cooldown_s"])


def test_valid_update_is_accepted_then_applied_once(watched, nucleus):
    component, target = watched
    status = nucleus.deploy(
        {"recognition": {"threshold": "0.5", "cooldown_s": "900"}, "cameras": [{"id": "gate", "source": "1"}]},
        "deploy-1",
    )
    assert status == "SUCCEEDED"
    [report] = nucleus.reports
    assert (report.status, report.deployment_id, report.message) == ("ACCEPTED", "deploy-1", None)
    _wait_until(lambda: target.calls)
    time.sleep(0.2)  # three keys changed, three update events: still one apply
    assert len(target.calls) == 1
    assert target.config.recognition.threshold == 0.5
    assert target.config.recognition.cooldown_s == 900.0
    assert [c.id for c in target.config.cameras] == ["gate"]
    assert component.accepted == 1 and component.rejected == 0


@pytest.mark.parametrize(
    ("merge", "expected"),
    [
        ({"recognition": {"threshold": "1.7"}}, "recognition.threshold = '1.7'"),
        ({"recognition": {"confirm_frames": "three"}}, "recognition.confirm_frames = 'three'"),
        (
            {"recognition": {"confirm_frames": "9", "confirm_window": "5"}},
            "confirm_frames (9) is larger than confirm_window (5)",
        ),
        ({"recognition": {"thresold": "0.5"}}, "recognition.thresold: unknown key"),
        ({"cameras": "door"}, "cameras"),
        ({"cameras": [{"id": "a b", "source": "0"}]}, "cameras.0.id = 'a b'"),
        ({"outbox": {"path": "/tmp/elsewhere.sqlite3"}}, "outbox, which need a restart"),
        ({"publisher": "carrier-pigeon"}, "publisher = 'carrier-pigeon'"),
    ],
)
def test_bad_update_is_rejected_naming_key_and_value_and_nothing_changes(watched, nucleus, merge, expected):
    component, target = watched
    before = copy.deepcopy(nucleus.configuration)
    running = target.config
    assert nucleus.deploy(merge, "deploy-bad") == "FAILED"
    [report] = nucleus.reports
    assert report.status == "REJECTED" and report.deployment_id == "deploy-bad"
    assert expected in report.message
    assert nucleus.configuration == before
    time.sleep(0.1)
    assert target.calls == [] and target.config is running
    assert component.rejected == 1 and component.last_error == report.message


def test_nucleus_only_change_is_not_applied(watched, nucleus):
    _, target = watched
    policy = {"aws.greengrass.ipc.mqttproxy": {f"{COMPONENT}:mqttproxy:1": {"operations": ["*"], "resources": ["x"]}}}
    assert nucleus.deploy({"accessControl": policy}, "deploy-acl") == "SUCCEEDED"
    assert nucleus.reports[-1].status == "ACCEPTED"
    time.sleep(0.2)
    assert target.calls == []


def test_invalid_update_that_skipped_validation_keeps_the_running_configuration(watched, nucleus):
    # The validation window (configurationValidationPolicy) can time out; the nucleus then
    # applies the configuration anyway, and the device must not take it.
    component, target = watched
    running = target.config
    nucleus.deploy({"recognition": {"cooldown_s": "-5"}}, "deploy-late", validate=False)
    _wait_until(lambda: component.last_error is not None)
    assert "recognition.cooldown_s = '-5'" in component.last_error
    assert target.calls == [] and target.config is running
    # A later good deployment is applied normally.
    nucleus.deploy({"recognition": {"cooldown_s": "30"}}, "deploy-fixed")
    _wait_until(lambda: target.calls)
    assert target.config.recognition.cooldown_s == 30.0


def test_a_failing_nucleus_read_is_a_clear_error(ipc, nucleus):
    nucleus.fail_get_configuration = model.ServiceError(message="nucleus is shutting down")
    with pytest.raises(IpcConfigError, match="GetConfiguration failed: nucleus is shutting down"):
        ComponentConfiguration(ipc).read()


def test_a_failing_read_during_an_update_keeps_the_running_configuration(watched, nucleus):
    component, target = watched
    nucleus.fail_get_configuration = model.ServiceError(message="busy")
    nucleus.deploy({"recognition": {"cooldown_s": "30"}}, "deploy-busy")
    _wait_until(lambda: component.last_error is not None)
    assert "GetConfiguration failed: busy" in component.last_error
    assert target.calls == []


def test_connect_outside_greengrass_names_what_is_missing(monkeypatch):
    monkeypatch.delenv("SVCUID", raising=False)
    monkeypatch.delenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", raising=False)
    assert not ipc_config.running_under_greengrass()
    with pytest.raises(IpcConfigError, match="SVCUID"):
        ComponentConfiguration.connect()


def test_close_ends_both_subscriptions_and_the_connection(watched, nucleus):
    component, _ = watched
    assert len(nucleus.subscriptions) == 2
    component.close()
    assert nucleus.subscriptions == [] and nucleus.closed


@pytest.fixture(scope="module")
def gallery_public_key_pem() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def test_gallery_settings_are_checked_but_left_to_the_run_step(watched, nucleus, gallery_public_key_pem):
    _, target = watched
    gallery = {"source": "s3://mpd-galleries/namus", "public_key_pem": gallery_public_key_pem, "interval_s": "1800"}
    assert nucleus.deploy({"gallery": gallery}, "set-gallery") == "SUCCEEDED"
    assert nucleus.reports[-1].status == "ACCEPTED"
    assert nucleus.configuration["gallery"] == {"scope": "", **gallery}  # scope: the recipe's default
    time.sleep(0.2)
    assert target.calls == []  # the Run step reads gallery.*; the pipeline's model never sees it


@pytest.mark.parametrize(
    ("gallery", "expected"),
    [
        (
            {"public_key_pem": "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"},
            "gallery.public_key_pem",
        ),
        ({"source": "ftp://galleries.example.org/"}, "gallery.source = 'ftp://galleries.example.org/'"),
        ({"interval_s": "5"}, "gallery.interval_s = '5'"),
        ({"sourse": "s3://mpd-galleries/namus"}, "gallery.sourse: unknown key"),
        ({"scope": "../texas"}, "gallery.scope = '../texas'"),
    ],
)
def test_bad_gallery_settings_are_rejected(watched, nucleus, gallery, expected):
    assert nucleus.deploy({"gallery": gallery}, "bad-gallery") == "FAILED"
    assert expected in nucleus.reports[-1].message
