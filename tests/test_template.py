"""template.yaml (AWS SAM): cfn-lint, and the facts cfn-lint cannot know: that the rule,
tables and environment match the code, every reference resolves, and each function
gets only the permissions it uses."""

from __future__ import annotations

import importlib
import json
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
PSEUDO = {"AWS::AccountId", "AWS::Region", "AWS::Partition", "AWS::StackName", "AWS::URLSuffix", "AWS::NoValue"}


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
    payload = template["Resources"]["MatchTopicRule"]["Properties"]["TopicRulePayload"]
    assert payload["Sql"] == RULE_SQL
    assert payload["AwsIotSqlVersion"] == RULE_SQL_VERSION
    assert LocalRule.parse(payload["Sql"]).topic_filter == "mpd/+/match"
    (action,) = payload["Actions"]
    assert action["Lambda"]["FunctionArn"] == {"Fn::GetAtt": ["AlertFunction", "Arn"]}
    assert "Sqs" in payload["ErrorAction"]  # a message the rule cannot deliver is kept, not lost
    permission = template["Resources"]["AlertInvokePermission"]
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
        if isinstance(value, dict) and "Ref" in value
    }
    values |= {"MPD_MAIL_FROM": "alerts@example.org", "MPD_GALLERY_URL": "s3://bucket/build/gallery"}
    values |= {"MPD_STORE_URL": "s3://bucket/ingest", "MPD_REVIEW_URL": "https://abc.execute-api.example"}
    values |= {"MPD_CROP_KMS_KEY": "arn:aws:kms:us-east-1:123456789012:key/x"}
    settings = AlertSettings.from_env({**values, "AWS_LAMBDA_FUNCTION_NAME": "mpd-alerts"})
    assert settings.backend == "aws" and settings.cooldown_seconds == 900
    assert settings.source_urls == {"namus": "https://www.namus.gov"}
    assert set(env) >= {"MPD_GALLERY_URL", "MPD_REVIEW_TABLE", "MPD_CROP_BUCKET", "MPD_REVIEW_URL"}


HANDLERS = {
    "AlertFunction": "sync_service.alerts.handler.lambda_handler",
    "CycleIngestFunction": "sync_service.cycle.handlers.ingest_handler",
    "GalleryBuildFunction": "sync_service.cycle.handlers.build_handler",
    "GalleryPublishFunction": "sync_service.cycle.handlers.publish_handler",
    "HealthFunction": "sync_service.fleet.handler.health_handler",
    "FleetCheckFunction": "sync_service.fleet.handler.check_handler",
    "ReviewFunction": "sync_service.review.lambda_app.handler",
    "ReviewSweepFunction": "sync_service.review.lambda_app.sweep_handler",
}


def test_handlers_exist(template):
    for name, handler in HANDLERS.items():
        assert template["Resources"][name]["Properties"]["Handler"] == handler
        module, attribute = handler.rsplit(".", 1)
        # An import error is a broken deployment, not a reason to skip.
        assert callable(getattr(importlib.import_module(module), attribute)), handler


def _statements(function: dict) -> list[dict]:
    return [s for policy in function["Properties"]["Policies"] for s in policy["Statement"]]


def test_alert_function_has_least_privilege(template):
    statements = _statements(template["Resources"]["AlertFunction"])
    granted = {(action, str(s.get("Resource", s.get("NotResource")))) for s in statements for action in s["Action"]}
    assert granted == {
        ("dynamodb:GetItem", "{'Fn::GetAtt': ['IdempotencyTable', 'Arn']}"),
        ("dynamodb:PutItem", "{'Fn::GetAtt': ['IdempotencyTable', 'Arn']}"),
        ("dynamodb:UpdateItem", "{'Fn::GetAtt': ['IdempotencyTable', 'Arn']}"),
        ("dynamodb:DeleteItem", "{'Fn::GetAtt': ['IdempotencyTable', 'Arn']}"),
        ("dynamodb:UpdateItem", "{'Fn::GetAtt': ['CooldownTable', 'Arn']}"),
        ("dynamodb:DeleteItem", "{'Fn::GetAtt': ['CooldownTable', 'Arn']}"),
        ("dynamodb:GetItem", "{'Fn::GetAtt': ['CooldownTable', 'Arn']}"),
        ("dynamodb:PutItem", "{'Fn::GetAtt': ['AuditTable', 'Arn']}"),
        ("dynamodb:GetItem", "{'Fn::GetAtt': ['AuditTable', 'Arn']}"),
        ("sns:Publish", "{'Ref': 'AlertTopic'}"),
        ("sns:Publish", "{'Fn::Sub': 'arn:${AWS::Partition}:sns:*:*:*'}"),  # NotResource: phone numbers only
        ("sqs:SendMessage", "{'Fn::GetAtt': ['AlertFailureQueue', 'Arn']}"),
        ("dynamodb:PutItem", "{'Fn::GetAtt': ['ReviewTable', 'Arn']}"),
        ("dynamodb:GetItem", "{'Fn::GetAtt': ['ReviewTable', 'Arn']}"),
        ("dynamodb:UpdateItem", "{'Fn::GetAtt': ['ReviewTable', 'Arn']}"),
        ("dynamodb:PutItem", "{'Fn::GetAtt': ['ReviewAuditTable', 'Arn']}"),
        ("s3:PutObject", "{'Fn::Sub': '${CropBucket.Arn}/crops/*'}"),
        ("s3:GetObject", "{'Fn::Sub': '${CropBucket.Arn}/crops/*'}"),
        ("kms:GenerateDataKey", "{'Fn::GetAtt': ['CropKey', 'Arn']}"),
        ("kms:Decrypt", "{'Fn::GetAtt': ['CropKey', 'Arn']}"),
        (
            "s3:GetObject",
            "[{'Fn::Sub': '${GalleryBucket.Arn}/build/gallery/*'}, {'Fn::Sub': '${GalleryBucket.Arn}/ingest/*'}]",
        ),
        ("s3:ListBucket", "{'Fn::GetAtt': ['GalleryBucket', 'Arn']}"),
        ("ses:SendRawEmail", "{'Fn::Sub': 'arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/*'}"),
    }
    (not_a_topic,) = [s for s in statements if "NotResource" in s]
    assert not_a_topic["Action"] == ["sns:Publish"]  # direct SMS has no ARN; topics other than ours stay denied


def _grants(function: dict) -> set[tuple[str, str]]:
    return {
        (a, json.dumps(s.get("Resource", s.get("NotResource")), sort_keys=True))
        for s in _statements(function)
        for a in s["Action"]
    }


def _s3(prefix: str) -> str:
    return json.dumps({"Fn::Sub": "${GalleryBucket.Arn}/" + prefix + "/*"})


def test_cycle_functions_touch_only_their_prefixes(template):
    functions = template["Resources"]
    ingest, build, publish = (functions[n] for n in ("CycleIngestFunction", "GalleryBuildFunction", "GalleryPublishFunction"))  # fmt: skip
    s3 = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert {g for g in _grants(ingest) if g[0] in s3} == {(a, _s3("ingest")) for a in s3}
    assert {g for g in _grants(build) if g[0] in s3} == {("s3:GetObject", _s3("ingest"))} | {(a, _s3("build")) for a in s3}  # fmt: skip
    assert {g for g in _grants(publish) if g[0] in s3} == (
        {("s3:GetObject", _s3("build")), ("s3:DeleteObject", _s3("build"))} | {(a, _s3("published")) for a in s3}
    )
    # The signing key is read at run time from Secrets Manager, by the build only; never in the environment.
    assert ("secretsmanager:GetSecretValue", json.dumps({"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${GallerySigningKeySecret}-*"})) in _grants(build)  # fmt: skip
    for name, function in functions.items():
        if function["Type"] == "AWS::Serverless::Function":
            env = function["Properties"].get("Environment", {}).get("Variables", {})
            assert "MPD_GALLERY_SIGNING_KEY" not in env and "resolve:secretsmanager" not in json.dumps(env), name
            secrets = {g for g in _grants(function) if "secretsmanager" in g[0]}
            if name == "ReviewFunction":  # its own session-signing secret only
                assert secrets == {("secretsmanager:GetSecretValue", json.dumps({"Ref": "ReviewSessionSecret"}))}
            else:
                assert not secrets or name == "GalleryBuildFunction", name
    assert build["Properties"]["Environment"]["Variables"]["MPD_GALLERY_SIGNING_KEY_SECRET"] == {"Ref": "GallerySigningKeySecret"}  # fmt: skip
    announce = {g for g in _grants(publish) if g[0] == "iot:Publish"}
    assert announce == {("iot:Publish", json.dumps({"Fn::Sub": "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:topic/mpd/gallery/*"}))}  # fmt: skip


def _flow(states: dict, start: str) -> list[tuple[str, str]]:
    """(function, step) of every Task in the order the happy path meets them, descending into Maps."""
    out, seen, name = [], set(), start
    while name and name not in seen:
        seen.add(name)
        state = states[name]
        if state["Type"] == "Task":
            params = state["Parameters"]
            out.append((params["FunctionName"], params["Payload"].get("step")))
        if state["Type"] == "Map":
            out += _flow(state["ItemProcessor"]["States"], state["ItemProcessor"]["StartAt"])
        if state["Type"] == "Choice":
            partial = [c["Next"] for c in state["Choices"] if c.get("StringEquals") in ("listed",)]
            name = partial[0] if partial else state["Default"]
            if name in seen:
                name = state["Default"]
            continue
        name = state.get("Next")
    return out


def test_state_machine_runs_the_stages_the_local_runner_runs(template):
    machine = template["Resources"]["CycleStateMachine"]["Properties"]
    definition = machine["Definition"]
    assert _flow(definition["States"], definition["StartAt"]) == [
        ("${IngestFunction}", "plan"), ("${IngestFunction}", "list"), ("${IngestFunction}", "fetch"),
        ("${IngestFunction}", "finish"), ("${BuildFunction}", "build"), ("${PublishFunction}", "publish"),
        ("${PublishFunction}", "prune"), ("${PublishFunction}", "outcome"),
    ]  # fmt: skip
    assert machine["DefinitionSubstitutions"] == {
        "IngestFunction": {"Fn::GetAtt": ["CycleIngestFunction", "Arn"]},
        "BuildFunction": {"Fn::GetAtt": ["GalleryBuildFunction", "Arn"]},
        "PublishFunction": {"Fn::GetAtt": ["GalleryPublishFunction", "Arn"]},
    }
    states = definition["States"]
    inner = states["Ingest"]["ItemProcessor"]["States"]
    fetch = inner["Shards"]["ItemProcessor"]["States"]
    # Each stage that can run out of time loops on "partial", as runner._loop does.
    for choice, target in ((inner["Listed"], "List"), (fetch["Fetched"], "Fetch"), (states["Built"], "Build")):
        assert {"Variable": choice["Choices"][0]["Variable"], "StringEquals": "partial", "Next": target} == choice["Choices"][0]  # fmt: skip
    # A failed stage ends in the Fail state (the alarm) before anything is published after it.
    for name in ("Build", "Publish", "Prune"):
        assert states[name]["Catch"][0]["Next"] == "CycleFailed"
    assert states["Judged"]["Choices"][0]["Next"] == "CycleFailed"
    assert machine["Events"]["Nightly"]["Type"] == "Schedule"
    alarm = template["Resources"]["CycleFailedAlarm"]["Properties"]
    assert alarm["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": "CycleStateMachine"}}]


def test_health_rule_is_the_one_mpd_cloud_serve_runs_and_every_problem_alarms(template):
    from sync_service.fleet.handler import NAMESPACE
    from sync_service.fleet.state import HEALTH_RULE_SQL

    rule = template["Resources"]["HealthTopicRule"]["Properties"]["TopicRulePayload"]
    assert rule["Sql"] == HEALTH_RULE_SQL and LocalRule.parse(rule["Sql"]).topic_filter == "mpd/+/health"
    assert rule["Actions"][0]["Sqs"]["QueueUrl"] == {"Ref": "HealthQueue"}
    watched = {
        r["Properties"]["MetricName"]
        for r in resources(template, "AWS::CloudWatch::Alarm").values()
        if r["Properties"].get("Namespace") == NAMESPACE
    }
    assert watched == {"DevicesSilent", "CamerasDown", "DevicesOutboxGrowing", "StaleGalleries"}
    queues = {
        r["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for r in resources(template, "AWS::CloudWatch::Alarm").values()
        if r["Properties"]["Namespace"] == "AWS/SQS"
    }
    assert queues == {"AlertFailureQueue", "HealthDeadLetterQueue"}


def test_no_wildcards_and_private_storage(template):
    for name in HANDLERS:
        for statement in _statements(template["Resources"][name]):
            # iot:DescribeEndpoint has no resource-level permissions: "*" is the only form.
            assert statement.get("Resource") != "*" or statement["Action"] == ["iot:DescribeEndpoint"], name
            assert not any(action.endswith(":*") for action in statement["Action"]), name
    for bucket in ("GalleryBucket", "CropBucket"):
        assert all(template["Resources"][bucket]["Properties"]["PublicAccessBlockConfiguration"].values())
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
        "CycleStateMachineArn",
        "DeviceTableName",
        "OpsTopicArn",
    } <= set(template["Outputs"])


def test_review_storage_matches_the_code(template):
    """Crops: SSE-KMS with our key, deleted after the TTL; review tables as the code queries them."""
    from sync_service.review.records import BY_SITE_INDEX, PENDING_INDEX, RETRY_INDEX

    crops = template["Resources"]["CropBucket"]["Properties"]
    (rule,) = crops["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": ["CropKey", "Arn"]},
    }
    (expiry,) = crops["LifecycleConfiguration"]["Rules"]
    assert expiry["Prefix"] == "crops/" and expiry["ExpirationInDays"] == {"Ref": "CropTtlDays"}
    review = template["Resources"]["ReviewTable"]["Properties"]
    assert review["KeySchema"] == [{"AttributeName": "review_id", "KeyType": "HASH"}]
    indexes = {index["IndexName"]: index["KeySchema"] for index in review["GlobalSecondaryIndexes"]}
    assert indexes[BY_SITE_INDEX] == [
        {"AttributeName": "site", "KeyType": "HASH"},
        {"AttributeName": "sort_key", "KeyType": "RANGE"},
    ]
    assert indexes[PENDING_INDEX] == [
        {"AttributeName": "pending", "KeyType": "HASH"},
        {"AttributeName": "created_ms", "KeyType": "RANGE"},
    ]
    assert indexes[RETRY_INDEX] == [
        {"AttributeName": "retry", "KeyType": "HASH"},
        {"AttributeName": "retry_ms", "KeyType": "RANGE"},
    ]
    sweep = template["Resources"]["ReviewSweepFunction"]["Properties"]
    (reviews,) = [s for s in sweep["Policies"][0]["Statement"] if s["Sid"] == "PendingReviews"]
    assert {"Fn::Sub": "${ReviewTable.Arn}/index/retry"} in reviews["Resource"]
    assert sweep["Environment"]["Variables"]["MPD_ALERT_TOPIC_ARN"] == {"Ref": "AlertTopic"}
    assert review["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_review_page_reads_its_settings_and_signs_in_with_cognito(template):
    env = template["Resources"]["ReviewFunction"]["Properties"]["Environment"]["Variables"]
    known = (
        set(ENV_FIELDS.values())
        | set(ENV_JSON)
        | {"MPD_REVIEW_SECRET_ARN", "MPD_COGNITO_USER_POOL_ID", "MPD_COGNITO_CLIENT_ID"}
    )
    assert {name for name in env if name.startswith("MPD_")} <= known
    assert env["MPD_COGNITO_USER_POOL_ID"] == {"Ref": "ReviewerPool"}
    client = template["Resources"]["ReviewerPoolClient"]["Properties"]
    assert "ALLOW_USER_PASSWORD_AUTH" in client["ExplicitAuthFlows"] and client["GenerateSecret"] is False
    events = template["Resources"]["ReviewFunction"]["Properties"]["Events"]
    assert {e["Properties"]["Path"] for e in events.values()} == {"/", "/{proxy+}"}
    sweep = template["Resources"]["ReviewSweepFunction"]["Properties"]["Events"]["EveryMinute"]
    assert sweep["Properties"]["Schedule"] == "rate(1 minute)"
