"""The reviewers' web page: log in, work through the queue from the keyboard, read the audit log.

Flask with Flask-Login (one login per reviewer) and Flask-WTF (every POST carries a CSRF token). Pages show
only what the store holds, which is de-identified text; error pages never repeat what a request sent."""

from __future__ import annotations

import os
import re
import secrets
from urllib.parse import urlsplit

from flask import Flask, abort, flash, g, redirect, render_template, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup, escape
from wtforms import PasswordField, RadioField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from tasks.review.resume import after_decision
from tasks.review.store import DECISIONS, ItemView, ReviewError, ReviewStore

DECISION_LABELS = {"approve": "Approve", "reject": "Reject", "needs_fix": "Needs fix"}
DECISION_KEYS = {"approve": "a", "reject": "r", "needs_fix": "f"}


class Reviewer(UserMixin):
    def __init__(self, name: str):
        self.id = name


class LoginForm(FlaskForm):
    name = StringField("Reviewer", validators=[DataRequired(), Length(max=120)])
    password = PasswordField("Password", validators=[DataRequired()])


class DecisionForm(FlaskForm):
    decision = RadioField("Decision", choices=[SelectChoice(d, DECISION_LABELS[d]) for d in DECISIONS],
                          validators=[DataRequired("choose a decision: a, r or f")])
    error_category = SelectField("Error category")
    comment = TextAreaField("Comment", validators=[Length(max=4000)])


class PostForm(FlaskForm):
    """A form with nothing but its CSRF token (logout)."""


def create_app(store: ReviewStore, secret_key: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        # Without a key from the caller, a fresh one per process: restarting the server logs everyone out.
        SECRET_KEY=secret_key or os.environ.get("MEDLORA_REVIEW_SECRET") or secrets.token_hex(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.extensions["review_store"] = store
    CSRFProtect(app)
    logins = LoginManager(app)
    logins.login_view = "login"
    logins.login_message = "Log in to review."
    logins.session_protection = "strong"

    @logins.user_loader
    def load_reviewer(name: str) -> Reviewer | None:
        return Reviewer(name) if name in store.reviewers() else None

    app.add_template_filter(_highlight, "highlight")
    app.add_template_filter(lambda moment: f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "", "utc")
    app.add_template_filter(lambda rate: "–" if rate is None else f"{rate:.0%}", "rate")

    @app.before_request
    def script_nonce() -> None:
        g.nonce = secrets.token_urlsafe(16)

    @app.after_request
    def security_headers(response):
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{g.get('nonce', '')}'; style-src 'unsafe-inline'; "
            "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"  # notes and decisions stay out of browser caches
        return response

    @app.errorhandler(CSRFError)
    def missing_token(error):
        return render_template("error.html", title="Form refused",
                               message="The form had no valid security token (it expired, or was not sent from "
                                       "this site). Reload the page and try again."), 400

    @app.errorhandler(404)
    def not_found(error):
        return render_template("error.html", title="Not found", message="There is no such page or review item."), 404

    @app.route("/login", methods=["GET", "POST"])
    def login():
        form = LoginForm()
        if form.validate_on_submit():
            name = form.name.data.strip()
            if store.check_password(name, form.password.data):
                session.clear()
                login_user(Reviewer(name))
                store.log(name, "login")
                return redirect(_local_target(request.args.get("next")) or url_for("queue"))
            # An unknown name may be a password typed in the wrong box: it stays out of the log.
            known = name in store.reviewers()
            store.log(name if known else "(unknown reviewer)", "login_failed",
                      detail={"reason": "wrong password" if known else "unknown reviewer",
                              "remote_addr": request.remote_addr})
            flash("Wrong reviewer name or password.", "error")
        return render_template("login.html", form=form)

    @app.post("/logout")
    @login_required
    def logout():
        if PostForm().validate_on_submit():
            store.log(current_user.id, "logout")
            logout_user()
            session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    @login_required
    def queue():
        batches = store.batches()
        batch = request.args.get("batch") or store.latest_batch()
        if batch == "all":
            batch = None
        elif batch is not None and batch not in batches:
            abort(404)
        items = store.items(batch=batch)
        return render_template("queue.html", items=items, summary=store.summary(batch), batch=batch, batches=batches,
                               pending=sum(item.pending for item in items))

    @app.route("/items/<int:item_id>", methods=["GET", "POST"])
    @login_required
    def item(item_id: int):
        try:
            shown = store.item(item_id)
        except ReviewError:
            abort(404)
        form = DecisionForm(error_category="none")
        form.error_category.choices = [SelectChoice(c, c.replace("_", " ")) for c in store.error_categories]
        if shown.pending and form.validate_on_submit():
            try:
                store.decide(item_id, current_user.id, form.decision.data, form.error_category.data,
                             form.comment.data or "")
            except ReviewError as error:
                flash(str(error), "error")
                return redirect(url_for("item", item_id=item_id))
            after_decision(store, shown.batch)
            upcoming = store.next_pending(shown.batch) or store.next_pending()
            if upcoming is None:
                flash("Queue complete: every item is decided.", "info")
                return redirect(url_for("queue", batch=shown.batch))
            flash(f"Item {item_id}: {DECISION_LABELS[form.decision.data].lower()}.", "info")
            return redirect(url_for("item", item_id=upcoming.id))
        if request.method == "POST" and not shown.pending:
            flash(f"Item {item_id} was already decided; decisions are final.", "error")
        return render_template("item.html", item=shown, form=form, keys=DECISION_KEYS,
                               next_item=_next_pending_after(store, shown),
                               history=store.audit(item_id=item_id))

    @app.get("/audit")
    @login_required
    def audit():
        return render_template("audit.html", entries=store.audit(limit=500))

    return app


def _next_pending_after(store: ReviewStore, item: ItemView) -> ItemView | None:
    """The pending item after this one in queue order (wrapping round), or the first pending one."""
    pending = store.items(batch=item.batch, status="pending") or store.items(status="pending")
    ids = [p.id for p in pending]
    if item.id in ids:
        others = ids[ids.index(item.id) + 1:] + ids[:ids.index(item.id)]
        return next((p for p in pending if p.id == others[0]), None) if others else None
    return pending[0] if pending else None


def flagged_terms(flags: list[str]) -> list[str]:
    """The words a flag points at ("unsupported_entity: warfarin" points at "warfarin")."""
    return [flag.split(":", 1)[1].strip() for flag in flags if ":" in flag and flag.split(":", 1)[1].strip()]


def _highlight(text: str, flags: list[str]) -> Markup:
    """The text, escaped, with every term a flag names marked."""
    terms = sorted(set(flagged_terms(flags)), key=len, reverse=True)
    if not terms:
        return escape(text)
    pattern = re.compile("|".join(re.escape(term) for term in terms), re.IGNORECASE)
    pieces, end = [], 0
    for match in pattern.finditer(text):
        pieces += [escape(text[end:match.start()]), Markup("<mark>%s</mark>") % match.group(0)]
        end = match.end()
    pieces.append(escape(text[end:]))
    return Markup("").join(pieces)


def _local_target(target: str | None) -> str | None:
    """`next` after login, only when it points into this site (no open redirects)."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target
