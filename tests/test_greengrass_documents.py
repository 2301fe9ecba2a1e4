"""The recipe and deployment the packager writes validate against the project's schemas,
and deliberately broken ones are refused with a message naming the bad key."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from click.testing import CliRunner

from greengrass import packaging
from greengrass.cli import greengrass_group

VERSION = "1.4.2"


@pytest.fixture()
def recipe() -> dict:
    return packaging.render_recipe(
        VERSION, "mpd-artifacts-test", "gg", runtime_version="1.0.11", models_version="1.0.22", pylibs_version="1.0.33"
    )


@pytest.fixture()
def deployment() -> dict:
    return packaging.render_deployment(VERSION, thing_group="field-cams", region="eu-west-1", account="123456789012")


def _leaves(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}/{index}")
    else:
        yield path, value


def test_rendered_recipe_is_valid_and_survives_a_yaml_round_trip(recipe, tmp_path):
    assert packaging.schema_errors(recipe, "recipe.schema.json") == []
    path = tmp_path / "recipe.yaml"
    path.write_text(packaging.dump_recipe(recipe))
    assert "&id" not in path.read_text()  # no YAML anchors in what the service receives
    assert yaml.safe_load(path.read_text()) == recipe
    result = CliRunner().invoke(greengrass_group, ["check", str(path)])
    assert result.exit_code == 0, result.output


def test_app_recipe_pins_runtime_and_models_and_starts_through_the_health_gate(recipe):
    deps = recipe["ComponentDependencies"]
    assert deps[packaging.RUNTIME_COMPONENT] == {"VersionRequirement": "=1.0.11", "DependencyType": "HARD"}
    assert deps[packaging.MODELS_COMPONENT] == {"VersionRequirement": "=1.0.22", "DependencyType": "HARD"}
    assert deps[packaging.PYLIBS_COMPONENT] == {"VersionRequirement": "=1.0.33", "DependencyType": "HARD"}
    by_arch = {m["Platform"]["architecture"]: m for m in recipe["Manifests"]}
    assert set(by_arch) == {"amd64", "aarch64"}
    for manifest in by_arch.values():
        [artifact] = manifest["Artifacts"]  # one small platform-independent artifact
        assert artifact["URI"] == f"s3://mpd-artifacts-test/gg/{packaging.COMPONENT_NAME}/{VERSION}/mpd-app.zip"
        lifecycle = manifest["Lifecycle"]
        assert set(lifecycle) == {"Startup"}  # Startup: the nucleus waits for the health gate
        startup = lifecycle["Startup"]
        assert startup["Script"] == "exec bash {artifacts:decompressedPath}/mpd-app/run.sh"
        assert startup["Timeout"] == packaging.HEALTH_DEADLINE_S + 60
        env = startup["Setenv"]
        assert env["MPD_RUNTIME_VENV"] == f"{{{packaging.RUNTIME_COMPONENT}:work:path}}/venv-1.0.11"
        assert env["MPD_MODEL_DIR"] == f"{{{packaging.MODELS_COMPONENT}:artifacts:decompressedPath}}/mpd-models"
        assert env["MPD_PYLIBS_DIR"] == f"{{{packaging.PYLIBS_COMPONENT}:artifacts:decompressedPath}}/mpd-pylibs/site"
        # State lives in the component's work folder, which no version owns.
        assert env["MPD_STATE_DIR"] == "{work:path}" and env["MPD_OUTBOX__PATH"].startswith("{work:path}/")
        assert env["MPD_RELEASE"] == packaging.release_id(VERSION, "1.0.11", "1.0.22", "1.0.33")
        # Gallery settings reach the step as recipe variables (a change restarts the component).
        assert env["MPD_GALLERY_SOURCE"] == "{configuration:/gallery/source}"
        assert env["MPD_GALLERY_PUBLIC_KEY_PEM"] == "{configuration:/gallery/public_key_pem}"


def test_runtime_and_models_recipes(tmp_path):
    runtime = packaging.render_runtime_recipe("1.0.11", "mpd-artifacts-test", "gg")
    by_arch = {m["Platform"]["architecture"]: m for m in runtime["Manifests"]}
    for arch, platform in (("amd64", "linux-x86_64"), ("aarch64", "linux-aarch64")):
        manifest = by_arch[arch]
        [artifact] = manifest["Artifacts"]
        assert (
            artifact["URI"]
            == f"s3://mpd-artifacts-test/gg/{packaging.RUNTIME_COMPONENT}/1.0.11/{platform}/mpd-runtime.zip"
        )
        install = manifest["Lifecycle"]["Install"]
        assert install["Skipif"] == "exists {work:path}/venv-1.0.11/.mpd-runtime-installed"
        assert "{work:path}/venv-1.0.11" in install["Script"]
    for other in (
        packaging.render_models_recipe("1.0.22", "mpd-artifacts-test", "gg"),
        packaging.render_pylibs_recipe("1.0.33", "mpd-artifacts-test", "gg"),
    ):
        [manifest] = other["Manifests"]  # platform-independent, unpacked by Greengrass, no install step
        assert manifest["Platform"] == {"os": "linux"} and "Lifecycle" not in manifest
        assert manifest["Artifacts"][0]["Permission"]["Read"] == "ALL"  # the app component reads it


def test_content_versions_are_stable_semver_within_the_nucleus_limits():
    import hashlib

    digest = hashlib.sha256(b"lock").hexdigest()
    version = packaging.content_version(digest)
    assert version == packaging.content_version(digest) != packaging.content_version(hashlib.sha256(b"x").hexdigest())
    major, minor, patch = (int(part) for part in version.split("."))
    assert (major, minor) == (1, 0) and 0 <= patch < 2**31
    packaging.render_runtime_recipe(version, "mpd-artifacts-test")


def test_download_plan_counts_only_components_whose_version_changed():
    def release(app, runtime, models):
        art = {"linux-x86_64": {"bytes": 60}, "linux-aarch64": {"bytes": 50}}
        return {
            "components": {
                packaging.COMPONENT_NAME: {"version": app, "artifacts": {"all": {"bytes": 1}}},
                packaging.RUNTIME_COMPONENT: {"version": runtime, "artifacts": art},
                packaging.MODELS_COMPONENT: {"version": models, "artifacts": {"all": {"bytes": 10}}},
            }
        }

    first = packaging.download_plan(None, release("1.0.0", "1.0.5", "1.0.7"))
    assert first["linux-aarch64"]["bytes"] == 61 and first["linux-x86_64"]["bytes"] == 71
    code_only = packaging.download_plan(release("1.0.0", "1.0.5", "1.0.7"), release("1.0.1", "1.0.5", "1.0.7"))
    assert code_only["linux-aarch64"]["bytes"] == 1
    bump = packaging.download_plan(release("1.0.1", "1.0.5", "1.0.7"), release("1.0.2", "1.0.6", "1.0.7"))
    assert bump["linux-aarch64"]["bytes"] == 51
    reasons = {c["component"]: c["reason"] for c in bump["linux-aarch64"]["components"]}
    assert reasons[packaging.MODELS_COMPONENT] == "unchanged"
    assert reasons[packaging.RUNTIME_COMPONENT] == "1.0.5 -> 1.0.6"


def test_health_deadline_is_checked():
    with pytest.raises(packaging.PackagingError, match="health deadline"):
        packaging.render_recipe(VERSION, "mpd-artifacts-test", health_deadline_s=5)


def test_default_configuration_is_strings_and_a_valid_device_configuration(recipe):
    from edge_app.config import load_config
    from edge_app.ipc_config import check_gallery_settings, device_part

    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    numbers = [(path, value) for path, value in _leaves(defaults) if isinstance(value, int | float)]
    assert numbers == []
    check_gallery_settings(defaults["gallery"])
    config = load_config(component_config=device_part(defaults))
    assert config.publisher == "greengrass"
    assert config.recognition.confirm_frames == int(defaults["recognition"]["confirm_frames"])


def test_component_may_publish_only_to_its_own_device_topics(recipe):
    access = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    assert list(access) == ["aws.greengrass.ipc.mqttproxy"]
    [policy] = access["aws.greengrass.ipc.mqttproxy"].values()
    assert policy["operations"] == ["aws.greengrass#PublishToIoTCore"]
    assert sorted(policy["resources"]) == ["mpd/{iot:thingName}/health", "mpd/{iot:thingName}/match"]


def _set(document: dict, path: list, value) -> dict:
    broken = copy.deepcopy(document)
    target = broken
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return broken


DEFAULTS = ["ComponentConfiguration", "DefaultConfiguration"]
LIFECYCLE = ["Manifests", 0, "Lifecycle"]
ARTIFACT = ["Manifests", 0, "Artifacts", 0]
POLICY = [*DEFAULTS, "accessControl", "aws.greengrass.ipc.mqttproxy", f"{packaging.COMPONENT_NAME}:mqttproxy:1"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["RecipeFormatVersion"], "2021-01-01", "RecipeFormatVersion"),
        (["RecipeFormatVersion"], KeyError, "'RecipeFormatVersion' is a required property"),
        (["ComponentVersion"], "1.4", "ComponentVersion"),
        (["ComponentName"], "aws.greengrass.Nucleus", "ComponentName"),
        (["ComponentName"], "bad name!", "ComponentName"),
        ([*DEFAULTS, "recognition", "confirm_frames"], 3, "recognition/confirm_frames"),
        ([*DEFAULTS, "health_interval_s"], 60.0, "health_interval_s"),
        ([*LIFECYCLE, "Instal"], {"Script": "true"}, "'Instal' was unexpected"),
        ([*LIFECYCLE, "Run"], {"Script": "true"}, "Lifecycle"),
        ([*LIFECYCLE, "Install"], {"Script": "true", "Skipif": "if exists /x"}, "Skipif"),
        ([*LIFECYCLE, "Startup", "Timeout"], "900", "Timeout"),
        ([*LIFECYCLE, "Startup", "RequiresPrivilege"], "yes", "RequiresPrivilege"),
        ([*ARTIFACT, "Unarchive"], "TAR", "Unarchive"),
        ([*ARTIFACT, "Permission", "Read"], "EVERYONE", "Read"),
        ([*ARTIFACT, "URI"], "https://example.org/mpd-edge.zip", "URI"),
        (["Manifests", 0, "Platform", "os"], "ubuntu", "os"),
        (["Manifests"], [], "Manifests"),
        (["ComponentDependencies", "aws.greengrass.TokenExchangeService", "DependencyType"], "MAYBE", "MAYBE"),
        ([*POLICY, "operations"], ["aws.greengrass#Publish To"], "operations"),
        ([*POLICY, "resources"], ["mpd/+/match"], "outside mpd/{iot:thingName}/"),
        ([*POLICY, "resources"], ["#"], "outside mpd/{iot:thingName}/"),
        ([*POLICY, "resources"], ["mpd/{iot:thingName}/match", "mpd/other-device/match"], "mpd/other-device/match"),
    ],
)
def test_broken_recipe_is_refused_naming_the_problem(recipe, path, value, expected):
    with pytest.raises(packaging.PackagingError) as error:
        packaging.check_recipe(_set(recipe, path, value))
    assert expected in str(error.value)


def test_bad_version_or_bucket_fails_before_anything_is_built():
    with pytest.raises(packaging.PackagingError, match="ComponentVersion"):
        packaging.render_recipe("latest", "mpd-artifacts-test")
    with pytest.raises(packaging.PackagingError, match="URI"):
        packaging.render_recipe("1.0.0", "Not_A_Bucket")


def test_rendered_deployment_is_valid_pinned_and_rolls_back(deployment, tmp_path):
    assert packaging.schema_errors(deployment, "deployment.schema.json") == []
    assert deployment["targetArn"] == "arn:aws:iot:eu-west-1:123456789012:thinggroup/field-cams"
    components = deployment["components"]
    assert components[packaging.COMPONENT_NAME]["componentVersion"] == VERSION
    assert {"aws.greengrass.Nucleus", "aws.greengrass.DiskSpooler"} <= set(components)
    ours = {packaging.RUNTIME_COMPONENT, packaging.PYLIBS_COMPONENT, packaging.MODELS_COMPONENT}
    assert ours <= set(components)  # all of ours, pinned
    spooler = json.loads(components["aws.greengrass.Nucleus"]["configurationUpdate"]["merge"])["mqtt"]["spooler"]
    assert spooler["storageType"] == "Disk" and spooler["pluginName"] == "aws.greengrass.DiskSpooler"
    assert deployment["deploymentPolicies"]["failureHandlingPolicy"] == "ROLLBACK"
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(deployment))
    result = CliRunner().invoke(greengrass_group, ["check", str(path)])
    assert result.exit_code == 0, result.output


def test_deployment_carries_a_configuration_merge_for_our_component():
    deployment = packaging.render_deployment(VERSION, configuration={"recognition": {"cooldown_s": "900"}})
    merge = deployment["components"][packaging.COMPONENT_NAME]["configurationUpdate"]["merge"]
    assert json.loads(merge) == {"recognition": {"cooldown_s": "900"}}
    with pytest.raises(packaging.PackagingError, match="write numbers as strings"):
        packaging.render_deployment(VERSION, configuration={"recognition": {"cooldown_s": 900}})


COMPONENT = ["components", packaging.COMPONENT_NAME]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ([*COMPONENT, "componentVersion"], "^1.4.0", "componentVersion"),
        ([*COMPONENT, "componentVersion"], "latest", "componentVersion"),
        (["deploymentPolicies", "failureHandlingPolicy"], "RETRY", "failureHandlingPolicy"),
        (["deploymentPolicies"], KeyError, "'deploymentPolicies' is a required property"),
        (["targetArn"], "field-cams", "targetArn"),
        (["targetArn"], "arn:aws:iot:eu-west-1:123456789012:thinggroup/", "targetArn"),
        ([*COMPONENT, "configurationUpdate"], {"merge": "{not json}"}, "not JSON"),
        ([*COMPONENT, "configurationUpdate"], {"merge": '{"health_interval_s": 60}'}, "write numbers as strings"),
        (["iotJobConfiguration", "jobExecutionsRolloutConfig", "maximumPerMinute"], 0, "maximumPerMinute"),
        (["deploymentPolicy"], {}, "'deploymentPolicy' was unexpected"),
    ],
)
def test_broken_deployment_is_refused_naming_the_problem(deployment, path, value, expected):
    with pytest.raises(packaging.PackagingError) as error:
        packaging.check_deployment(_set(deployment, path, value))
    assert expected in str(error.value)


def test_check_command_fails_on_a_broken_or_malformed_file(tmp_path, recipe):
    broken = tmp_path / "broken.yaml"
    broken.write_text(packaging.dump_recipe(_set(recipe, ["RecipeFormatVersion"], "2021-01-01")))
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"targetArn": ')
    result = CliRunner().invoke(greengrass_group, ["check", str(broken), str(malformed)])
    assert result.exit_code == 1
    assert "RecipeFormatVersion" in result.output
    assert "malformed.json: not valid JSON" in result.output


def test_package_refuses_a_previous_release_that_is_not_one(tmp_path):
    bad = tmp_path / "release.json"
    bad.write_text("{}")
    with pytest.raises(packaging.PackagingError, match="not a release.json"):
        packaging.package("1.0.0", tmp_path / "out", bucket="mpd-artifacts-test", previous=bad)


def test_package_puts_gallery_settings_into_the_deployment_and_checks_them(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    gallery = {"source": "s3://mpd-galleries/namus", "public_key_pem": pem.decode()}
    deployment = packaging.render_deployment(VERSION, configuration={"gallery": gallery})
    merge = json.loads(deployment["components"][packaging.COMPONENT_NAME]["configurationUpdate"]["merge"])
    assert merge == {"gallery": gallery}
    with pytest.raises(packaging.PackagingError, match="gallery.public_key_pem"):
        packaging.render_deployment(VERSION, configuration={"gallery": {"public_key_pem": "not a key"}})
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("hello")
    with pytest.raises(packaging.PackagingError, match="gallery.public_key_pem"):
        packaging.package("1.0.0", tmp_path, bucket="mpd-artifacts-test", gallery_public_key=not_a_key)


# Recipes as the public documentation writes them: the schema must accept what AWS publishes.
AWS_HELLO_WORLD = """
RecipeFormatVersion: '2020-01-25'
ComponentName: com.example.HelloWorld
ComponentVersion: '1.0.0'
ComponentDescription: My first AWS IoT Greengrass component.
ComponentPublisher: Amazon
ComponentConfiguration:
  DefaultConfiguration:
    Message: world
Manifests:
  - Platform:
      os: linux
    Lifecycle:
      run: |
        python3 -u {artifacts:path}/hello_world.py "{configuration:/Message}"
"""
SHARED_DOC_EXAMPLE = """
RecipeFormatVersion: "2020-01-25"
ComponentName: "com.example.face.Alerter"
ComponentVersion: "1.4.0"
ComponentDependencies:
  com.example.face.Gallery: {VersionRequirement: ">=2026.0.0", DependencyType: "SOFT"}
  aws.greengrass.StreamManager: {VersionRequirement: "^2.0.0", DependencyType: "SOFT"}
ComponentConfiguration:
  DefaultConfiguration:
    matchThreshold: "0.62"
    accessControl:
      aws.greengrass.ipc.mqttproxy:
        "com.example.face.Alerter:mqttproxy:1":
          policyDescription: "Publish match alerts and heartbeats for this device only"
          operations: ["aws.greengrass#PublishToIoTCore"]
          resources: ["faces/{iot:thingName}/match", "faces/{iot:thingName}/health"]
Manifests:
  - Platform: {os: linux, architecture: aarch64}
    Artifacts:
      - URI: "s3://example-gg-artifacts/com.example.face.Alerter/1.4.0/alerter.zip"
        Unarchive: ZIP
        Permission: {Read: OWNER, Execute: OWNER}
    Lifecycle:
      Install:
        Skipif: "exists {work:path}/venv/bin/python"
        Script: "python3 -m venv {work:path}/venv"
        Timeout: 900
      Run:
        Script: "{work:path}/venv/bin/python -u {artifacts:decompressedPath}/alerter/main.py"
"""


@pytest.mark.parametrize("text", [AWS_HELLO_WORLD, SHARED_DOC_EXAMPLE], ids=["aws-hello-world", "shared-doc-example"])
def test_schema_accepts_recipes_written_as_the_public_reference_does(text):
    assert packaging.schema_errors(yaml.safe_load(text), "recipe.schema.json") == []


@pytest.mark.parametrize(
    ("lifecycle", "expected"),
    [
        ({"run": "a", "Run": "b"}, "should not be valid"),
        ({"run": "a", "Startup": "b"}, "should not be valid"),
        ({"Instal": "a"}, "'Instal' was unexpected"),
        ({"RUN": "a"}, "'RUN' was unexpected"),
    ],
)
def test_schema_refuses_ambiguous_or_misspelt_lifecycle_steps(lifecycle, expected):
    recipe = yaml.safe_load(AWS_HELLO_WORLD)
    recipe["Manifests"][0]["Lifecycle"] = lifecycle
    assert any(expected in error for error in packaging.schema_errors(recipe, "recipe.schema.json"))
