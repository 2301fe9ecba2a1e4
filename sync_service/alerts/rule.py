"""The IoT topic rule that feeds the alert Lambda, and its local evaluation.

IoT Core's Lambda action only passes JSON, so the rule hands over the raw payload
base64-encoded: the handler then validates the exact bytes the device sent with
the one contract (``MatchEvent.from_json``), including its size limit, and a
payload that is not JSON still reaches the handler to be logged with its reason.
There is deliberately no WHERE clause: anything the rule filtered out would vanish
without a log line, and every message on ``mpd/+/match`` deserves a decision.

``mpd cloud serve`` evaluates the same SQL locally (mosquitto has no rule engine);
``LocalRule`` understands exactly this statement and refuses any other, so the
template and the local stand-in cannot drift apart silently.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

TOPIC_FILTER = "mpd/+/match"
RULE_SQL = f"SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_ms FROM '{TOPIC_FILTER}'"
RULE_SQL_VERSION = "2016-03-23"

_SQL = re.compile(
    r"^SELECT encode\(\*, 'base64'\) AS payload, topic\(\) AS topic, timestamp\(\) AS received_ms "
    r"FROM '(?P<filter>[^']+)'(?: WHERE (?P<where>.+))?$"
)


class RuleEvent(BaseModel):
    """What the rule passes to the Lambda: the payload bytes (base64), topic and arrival time."""

    model_config = ConfigDict(extra="ignore")

    payload: str = Field(max_length=64 * 1024)
    topic: str = Field(max_length=256)
    received_ms: int | None = None

    def payload_bytes(self) -> bytes:
        return base64.b64decode(self.payload, validate=True)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest), as IoT Core applies it."""
    filter_levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def device_of(topic: str) -> str | None:
    """The device id a match topic names (``mpd/{device_id}/match``)."""
    levels = topic.split("/")
    return levels[1] if len(levels) == 3 and topic_matches(TOPIC_FILTER, topic) else None


@dataclass(frozen=True)
class LocalRule:
    """The rule's SQL applied to MQTT messages on one machine."""

    topic_filter: str

    @classmethod
    def parse(cls, sql: str = RULE_SQL) -> LocalRule:
        match = _SQL.match(sql.strip())
        if match is None:
            raise ValueError(f"the local rule engine does not understand this SQL: {sql!r}")
        if match["where"]:
            raise ValueError(f"the local rule engine cannot evaluate WHERE {match['where']!r}; extend LocalRule")
        return cls(match["filter"])

    def event_for(self, topic: str, payload: bytes, received_ms: int | None = None) -> dict | None:
        """The Lambda event IoT Core would send for this message, or None if the rule does not fire."""
        if not topic_matches(self.topic_filter, topic):
            return None
        return {
            "payload": base64.b64encode(payload).decode("ascii"),
            "topic": topic,
            "received_ms": received_ms if received_ms is not None else int(time.time() * 1000),
        }
