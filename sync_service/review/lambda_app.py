"""AWS Lambda entry points of the review page (behind API Gateway or a function URL)
and of the escalation sweep (EventBridge, every minute). Thin on purpose: the app is
``web.create_app``, the same one ``mpd cloud serve`` runs."""

from __future__ import annotations

from typing import Any

from apig_wsgi import make_lambda_handler

from sync_service.alerts.config import AlertSettings
from sync_service.alerts.handler import build_stores
from sync_service.review.app import build_app
from sync_service.review.service import ReviewService

_handler: Any = None
_review: ReviewService | None = None


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


def sweep_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Scheduled: escalate pending alerts, expire old ones."""
    return _service().sweep()
