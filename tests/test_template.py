"""template.yaml (AWS SAM): cfn-lint, and the facts cfn-lint cannot know: that the rule,
tables and environment match the code, every reference resolves, and each function
gets only the permissions it uses."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import decode

from sync_service.alerts.config import ENV_FIELDS, ENV_JSON, AlertSettings
from sync_service.alerts.rule import RULE_SQL, RULE_SQL_VERSION, LocalRule
from sync_service.alerts.stores import AUDIT, COOLDOWN, IDEMPOTENCY

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
PSEUDO = {"AWS::AccountId", "AWS::Region", "AWS::Partition", "AWS::StackName", "AWS::URLSuffix"}


@pytest.fixture(scope="module")
def template() -> dict:
    data, problems = decode(str(TEMPLATE))
    assert not problems, problems
    return data


def resources(template: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def test_cfn_lint_passes():
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    assert cfn_lint, "cfn-lint is not installed (pip install -e '.[dev]')"
    result = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _references(node) -> list[str]:
    """Every Ref, GetAtt and ${Name} target in a template fragment."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.append(value)
            elif key == "Fn::GetAtt":
                found.append(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found += [name.split(".")[0] for name in re.findall(r"\$\{([^!}]+)\}", text)]
                found += _references(value[1]) if isinstance(value, list) else []
            else:
                found += _references(value)
    elif isinstance(node, list):
        for item in node:
            found += _references(item)
    return found


def test_every_reference_resolves(template):
    # cfn-lint does not follow references inside SAM function properties (policies, env).
    known = set(template["Resources"]) | set(template.get("Parameters", {})) | PSEUDO
    missing = sorted({name for name in _references(template["Resources"]) if name not in known})
    assert not missing, f"references to nothing: {missing}"


def test_topic_rule_is_the_one_the_local_rule_engine_runs(template):
    (rule,) = resources(template, "AWS::IoT::TopicRule").values()
    payload = rule["Properties"]["TopicRulePayload"]
    assert payload["Sql"] == RULE_SQL
    assert payload["AwsIotSqlVersion"] == RULE_SQL_VERSION
    assert LocalRule.parse(payload["Sql"]).topic_filter == "mpd/+/match"
    (action,) = payload["Actions"]
    assert action["Lambda"]["FunctionArn"] == {"Fn::GetAtt": ["AlertFunction", "Arn"]}
    assert "Sqs" in payload["ErrorAction"]  # a message the rule cannot deliver is kept, not lost
    (permission,) = resources(template, "AWS::Lambda::Permission").values()
    assert permission["Properties"]["Principal"] == "iot.amazonaws.com"
    assert permission["Properties"]["SourceArn"] == {"Fn::GetAtt": ["MatchTopicRule", "Arn"]}


def test_tables_match_the_code(template):
    env = template["Resources"]["AlertFunction"]["Properties"]["Environment"]["Variables"]
    for variable, spec in (
        ("MPD_IDEMPOTENCY_TABLE", IDEMPOTENCY),
        ("MPD_COOLDOWN_TABLE", COOLDOWN),
        ("MPD_AUDIT_TABLE", AUDIT),
    ):
        table = template["Resources"][env[variable]["Ref"]]["Properties"]
        assert table["KeySchema"] == [{"AttributeName": spec.key, "KeyType": "HASH"}]
        assert table["TimeToLiveSpecification"] == {"AttributeName": spec.ttl_attribute, "Enabled": True}


def test_alert_environment_is_what_the_handler_reads(template):
    env = template["Resources"]["AlertFunction"]["Properties"]["Environment"]["Variables"]
    ours = {name for name in env if name.startswith("MPD_")}
    unknown = ours - set(ENV_FIELDS.values()) - set(ENV_JSON)
    assert not unknown, f"the handler does not read {sorted(unknown)}"
    # With references replaced by plausible values, the settings validate.
    params = template["Parameters"]
    values = {name: value for name, value in env.items() if isinstance(value, str)}
    values |= {
        name: str(params.get(value["Ref"], {}).get("Default", f"{value['Ref']}-physical-name"))
        for name, value in env.items()
        if isinstance(value, dict)
    }
    settings = AlertSettings.from_env({**values, "AWS_LAMBDA_FUNCTION_NAME": "mpd-alerts"})
    assert settings.backend == "aws" and settings.cooldown_seconds == 900
    assert settings.source_urls == {"namus": "https://www.namus.gov"}


def test_handlers_exist():
    for name, handler in (
        ("AlertFunction", "sync_service.alerts.handler.lambda_handler"),
        ("GalleryBuildFunction", "sync_service.gallery.nightly.lambda_handler"),
    ):
        declared = decode(str(TEMPLATE))[0]["Resources"][name]["Properties"]["Handler"]
        assert declared == handler
        module, attribute = handler.rsplit(".", 1)
        # An import error is a broken deployment, not a reason to skip.
        assert callable(getattr(importlib.import_module(module), attribute)), handler


def _statements(function: dict) -> list[dict]:
    return [s for policy in function["Properties"]["Policies"] for s in policy["Statement"]]


def test_alert_function_has_least_privilege(template):
    statements = _statements(template["Resources"]["AlertFunction"])
    granted = {(action, str(s["Resource"])) for s in statements for action in s["Action"]}
    assert granted == {
        ("dynamodb:GetItem", "{'Fn::GetAtt': ['IdempotencyTable', 'Arn']}"),
        ("dynamodb:PutItem", "{'Fn::GetAtt': ['IdempotencyTable', 'Arn']}"),
        ("dynamodb:UpdateItem", "{'Fn::GetAtt': ['IdempotencyTable', 'Arn']}"),
        ("dynamodb:DeleteItem", "{'Fn::GetAtt': ['IdempotencyTable', 'Arn']}"),
        ("dynamodb:UpdateItem", "{'Fn::GetAtt': ['CooldownTable', 'Arn']}"),
        ("dynamodb:DeleteItem", "{'Fn::GetAtt': ['CooldownTable', 'Arn']}"),
        ("dynamodb:PutItem", "{'Fn::GetAtt': ['AuditTable', 'Arn']}"),
        ("dynamodb:GetItem", "{'Fn::GetAtt': ['AuditTable', 'Arn']}"),
        ("sns:Publish", "{'Ref': 'AlertTopic'}"),
        ("sqs:SendMessage", "{'Fn::GetAtt': ['AlertFailureQueue', 'Arn']}"),
    }


def test_gallery_build_reads_the_store_and_writes_only_the_gallery(template):
    function = template["Resources"]["GalleryBuildFunction"]
    statements = _statements(function)
    actions = {action for s in statements for action in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    writes = [s for s in statements if {"s3:PutObject", "s3:DeleteObject"} & set(s["Action"])]
    assert [s["Resource"] for s in writes] == [{"Fn::Sub": "${GalleryBucket.Arn}/published/*"}]
    env = function["Properties"]["Environment"]["Variables"]
    assert env["MPD_STORE_URL"] == {"Fn::Sub": "s3://${GalleryBucket}/ingest"}
    assert env["MPD_GALLERY_OUT"] == {"Fn::Sub": "s3://${GalleryBucket}/published"}
    assert function["Properties"]["Events"]["Nightly"]["Type"] == "Schedule"


def test_no_wildcards_and_private_storage(template):
    for name in ("AlertFunction", "GalleryBuildFunction"):
        for statement in _statements(template["Resources"][name]):
            assert statement["Resource"] != "*", name
            assert not any(action.endswith(":*") for action in statement["Action"]), name
    bucket = template["Resources"]["GalleryBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    for table in resources(template, "AWS::DynamoDB::Table").values():
        assert table["Properties"]["SSESpecification"] == {"SSEEnabled": True}


def test_outputs_name_what_operators_need(template):
    assert {
        "AlertFunctionArn",
        "AlertTopicArn",
        "MatchTopicRuleName",
        "AlertFailureQueueUrl",
        "GalleryBucketName",
        "GalleryBuildFunctionArn",
    } <= set(template["Outputs"])
