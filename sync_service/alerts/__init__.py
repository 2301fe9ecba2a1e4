"""Cloud alerts: the IoT rule's Lambda that turns a confirmed match into one SMS.

``handler.lambda_handler`` is the Lambda entry point; ``cli.cloud_group`` runs the same
handler on one machine (``mpd cloud serve``). See docs/alerts.md.
"""
