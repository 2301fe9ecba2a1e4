"""AWS Lambda entry points of the review page (behind API Gateway or a function URL)
and of the sweep (EventBridge, every minute: escalation, expiry, notification retries,
with CloudWatch metrics for the alarms). Thin on purpose: the app is ``web.create_app``,
the same one ``mpd cloud serve`` runs."""

from __future__ import annotations

from typing import Any

from apig_wsgi import make_lambda_handler
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from sync_service.alerts.config import AlertSettings
from sync_service.alerts.handler import build_stores
from sync_service.review.app import build_app
from sync_service.review.service import ReviewService

_handler: Any = None
_review: ReviewService | None = None

# Embedded metric format (a JSON log line; no PutMetricData permission needed). template.yaml
# alarms on these names in this namespace, with this service dimension.
METRICS_NAMESPACE = "MPD/Review"
SWEEP_SERVICE = "mpd-review-sweep"
# sweep() count -> metric: a notification given up (someone was never told), and how many
# notifications are waiting for a retry right now (a channel is failing).
SWEEP_METRICS = {"gave_up": "NotificationsGivenUp", "awaiting_retry": "NotificationsAwaitingRetry"}
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SWEEP_SERVICE)


def _service() -> ReviewService:
    global _review
    if _review is None:  # built once per container
        _review = build_stores(AlertSettings.from_env())[2]
    return _review


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """HTTP: API Gateway (REST or HTTP API), ALB, or a Lambda function URL."""
    global _handler
    if _handler is None:
        _handler = make_lambda_handler(build_app(AlertSettings.from_env(), _service()), binary_support=True)
    return _handler(event, context)


@metrics.log_metrics
def sweep_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Scheduled: escalate pending alerts, expire old ones, retry notifications."""
    done = _service().sweep()
    for count, name in SWEEP_METRICS.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=done[count])
    return done
