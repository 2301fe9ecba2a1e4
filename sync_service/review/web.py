"""The review page: Flask + Jinja2, the same app locally (waitress) and on Lambda (apig-wsgi).

Pages: log in; the list of alerts of the reviewer's sites (pending on top, newest
first, paginated); one alert (the camera's crop beside the case photos, similarity
against the threshold, where and when, fresh case details) with Confirm and Not this
person. Everything but the login page needs a session; a session ends after
``session_minutes`` idle or ``SESSION_MAX_HOURS`` after login. Every form carries a
CSRF token (Flask-WTF). An alert of a site the reviewer is not assigned to answers
404, like one that does not exist. Every view and decision is audited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask, Response, abort, flash, g, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from wtforms import PasswordField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from sync_service.alerts.cases import SOURCE_LABELS
from sync_service.review.auth import Authenticator, AuthError
from sync_service.review.records import Decided, ReviewRecord, State, is_review_id
from sync_service.review.service import ReviewService

PAGE_SIZE = 25
DELIVERY_LABELS = {"responders": "Responders", "followup": "Follow-up to responders", "escalation": "Second reviewers"}
SESSION_MAX_HOURS = 12  # a stolen cookie is worthless after a shift, idle or not


class LoginForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=128)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    submit = SubmitField("Log in")


class DecisionForm(FlaskForm):
    note = TextAreaField("Note (optional)", validators=[Length(max=500)])
    confirm = SubmitField("Confirm")
    dismiss = SubmitField("Not this person")


class LogoutForm(FlaskForm):
    submit = SubmitField("Log out")


def create_app(
    service: ReviewService,
    auth: Authenticator,
    secret_key: bytes,
    *,
    session_minutes: float = 30,
    secure_cookies: bool = True,
    clock: Callable[[], float] = time.time,
) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=session_minutes),
        SESSION_REFRESH_EACH_REQUEST=True,  # idle timeout: each request extends it
        SESSION_COOKIE_NAME="mpd_review",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        MAX_CONTENT_LENGTH=16 * 1024,
    )
    CSRFProtect(app)
    app.jinja_env.globals.update(source_label=lambda s: SOURCE_LABELS.get(s, s), local_time=local_time)
    app.jinja_env.filters["ms_time"] = lambda ms, record: local_time(
        record, datetime.fromtimestamp(ms / 1000, UTC), "%Y-%m-%d %H:%M:%S %Z"
    )

    @app.context_processor
    def forms() -> dict[str, Any]:
        return {"logout": LogoutForm()}

    def audit(subject: str, action: str, detail: str = "") -> None:
        service.reviews.audit(subject, g.user if g.get("user") else "anonymous", action, detail)

    @app.before_request
    def load_session() -> None:
        g.user, g.sites = None, frozenset()
        user = session.get("user")
        if user is None:
            return
        if clock() - session.get("login_at", 0) > SESSION_MAX_HOURS * 3600:
            session.clear()
            return
        g.user, g.sites = user, frozenset(session.get("sites", []))

    def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if g.user is None:
                # Nothing about the alert is revealed, not even whether it exists.
                return redirect(url_for("login", next=request.path))
            return view(*args, **kwargs)

        return wrapped

    def visible(review_id: str) -> ReviewRecord:
        """The record, if this reviewer may see it; 404 otherwise (no hint it exists)."""
        record = service.reviews.get(review_id) if is_review_id(review_id) else None
        if record is None or record.site not in g.sites:
            audit(review_id[:32], "denied" if record else "not_found", request.path[:100])
            abort(404)
        return record

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none';"
            " base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> tuple[str, int]:
        audit("auth", "csrf_rejected", f"{request.path[:100]}: {error.description}")
        return render_template("error.html", title="Request refused", message=error.description), 400

    @app.errorhandler(404)
    def not_found(error: Any) -> tuple[str, int]:
        return render_template("error.html", title="Not found", message="There is nothing here for you."), 404

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("alerts"))

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        form = LoginForm()
        if form.validate_on_submit():
            try:
                reviewer = auth.authenticate(form.username.data, form.password.data)
            except AuthError as error:
                service.reviews.audit("auth", form.username.data[:64], "login_failed", str(error))
                flash(str(error), "error")
                return render_template("login.html", form=form), 401
            session.clear()  # a fresh session id: no fixation
            session.permanent = True
            session.update(user=reviewer.username, sites=sorted(reviewer.sites), login_at=clock())
            service.reviews.audit("auth", reviewer.username, "login", ",".join(sorted(reviewer.sites)))
            target = request.args.get("next", "")
            # Only our own paths: no open redirect.
            if not target.startswith("/") or target.startswith("//"):
                target = url_for("alerts")
            return redirect(target)
        return render_template("login.html", form=form)

    @app.post("/logout")
    def logout() -> Response:
        if LogoutForm().validate_on_submit() and g.user:
            audit("auth", "logout")
        session.clear()
        return redirect(url_for("login"))

    @app.get("/r/<review_id>")
    @login_required
    def short_link(review_id: str) -> Response:
        return redirect(url_for("alert", review_id=review_id))

    @app.get("/alerts")
    @login_required
    def alerts() -> str:
        before = request.args.get("before") or None
        if before is not None and (len(before) > 20 or not before.replace("#", "").isdigit()):
            abort(400)
        records = service.reviews.page(g.sites, before, PAGE_SIZE + 1)
        more = len(records) > PAGE_SIZE
        records = records[:PAGE_SIZE]
        audit("list", "viewed", f"{len(records)} alerts" + (f" before {before}" if before else ""))
        return render_template(
            "list.html",
            records=records,
            next_cursor=records[-1].sort_key if more else None,
            first_page=before is None,
        )

    @app.route("/alerts/<review_id>", methods=["GET"])
    @login_required
    def alert(review_id: str) -> str:
        record = visible(review_id)
        audit(record.review_id, "viewed")
        site = service.site(record.site)
        told = service.agency_recipients(site, record) if site.notify_case_agency else []
        return render_template(
            "alert.html",
            record=record,
            agency_told=[address for r in told for address in (r.phone, r.email) if address],
            delivery_labels=DELIVERY_LABELS,
            form=DecisionForm(),
            trail=service.reviews.audit_trail(record.review_id)[-20:],
            photos=range(len(record.case_photos)),
            state=State,
        )

    @app.post("/alerts/<review_id>/decide")
    @login_required
    def decide(review_id: str) -> Response:
        record = visible(review_id)
        form = DecisionForm()
        if not form.validate_on_submit() or not (form.confirm.data or form.dismiss.data):
            flash("Choose Confirm or Not this person.", "error")
            return redirect(url_for("alert", review_id=record.review_id))
        try:
            outcome = service.decide(
                record.review_id, g.user, confirm=bool(form.confirm.data), note=form.note.data or ""
            )
        except Decided as decided:
            other = decided.record
            audit(record.review_id, "decision_refused", f"already {other.state.value}")
            flash(
                f"Not applied: this alert was already {other.state.value} by {other.decided_by}"
                f" at {local_time(other, other.decided_at)}.",
                "error",
            )
            return redirect(url_for("alert", review_id=record.review_id))
        what = "Confirmed" if outcome.record.state == State.CONFIRMED else "Dismissed"
        told = f" {len(outcome.sent)} recipient(s) notified." if outcome.sent else ""
        flash(f"{what}.{told}", "ok")
        if outcome.error:
            flash(
                f"Sending failed: {outcome.error}. The decision is recorded; the message is retried"
                " automatically (see Notifications).",
                "error",
            )
        return redirect(url_for("alert", review_id=record.review_id))

    def image(data: bytes | None, subtype: str = "jpeg") -> Response:
        if data is None:
            abort(404)
        response = Response(data, mimetype=f"image/{subtype}")
        response.headers["Content-Disposition"] = "inline"
        return response

    @app.get("/alerts/<review_id>/crop.jpg")
    @login_required
    def crop(review_id: str) -> Response:
        record = visible(review_id)
        return image(service.reviews.get_crop(record.review_id) if record.crop_available else None)

    @app.get("/alerts/<review_id>/photo/<int:index>")
    @login_required
    def case_photo(review_id: str, index: int) -> Response:
        record = visible(review_id)
        photo = service.case_photo(record, index)
        return image(*photo) if photo else image(None)

    return app


def local_time(record: ReviewRecord, when: datetime | None, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    if when is None:
        return ""
    return when.astimezone(ZoneInfo(record.timezone)).strftime(fmt)
