"""The review queue: model outputs waiting for a person's decision, the reviewers, and an append-only audit log.

One SQLAlchemy store behind the CLI and the web page. Any SQLAlchemy URL works (SQLite for one machine,
PostgreSQL for a team), so the types are portable ones: JSON is kept as text, times as UTC datetimes.
The store only ever holds de-identified text, and the audit log never holds note text at all."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

from sqlalchemy import (DDL, DateTime, Float, ForeignKey, Integer, String, Text, case, create_engine, delete, event,
                        func, select, update)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from werkzeug.security import check_password_hash, generate_password_hash

DECISIONS = ("approve", "reject", "needs_fix")
DEFAULT_ERROR_CATEGORIES = ("none", "hallucination", "omission", "negation", "wrong_answer", "formatting", "other")
SAMPLING = ("flagged", "random")
STATUSES = ("pending", "decided")
PIPELINE_ACTOR = "pipeline"


class ReviewError(ValueError):
    """A request the queue cannot honour; the message says what was wrong and what to do."""


@dataclass
class QueueItem:
    """One model output the evaluation stage puts in front of reviewers."""

    candidate: str  # display key "model/version", e.g. "medlora-router/3"
    model: str  # registered model name
    version: str
    request_id: str  # note id or PubMedQA id (already de-identified)
    input_text: str  # the de-identified input: a note, or question + context
    output_text: str
    reference: str  # reference summary or answer ("" when none)
    flags: list[str] = field(default_factory=list)  # e.g. ["high_entropy", "unsupported_entity: warfarin"]
    priority: float = 0.0  # higher is reviewed first
    sampled: str = "random"  # "flagged" or "random"


@dataclass(frozen=True)
class ItemView:
    id: int
    batch: str
    candidate: str
    model: str
    version: str
    request_id: str
    input_text: str
    output_text: str
    reference: str
    flags: list[str]
    priority: float
    sampled: str
    created_at: datetime
    decision: str | None
    error_category: str | None
    comment: str
    reviewer: str | None
    decided_at: datetime | None

    @property
    def pending(self) -> bool:
        return self.decision is None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: datetime
    actor: str
    action: str
    item_id: int | None
    detail: dict


class _Base(DeclarativeBase):
    pass


class _Reviewer(_Base):
    __tablename__ = "reviewers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Item(_Base):
    __tablename__ = "review_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch: Mapped[str] = mapped_column(String(200), index=True)
    candidate: Mapped[str] = mapped_column(String(300), index=True)
    model: Mapped[str] = mapped_column(String(250))
    version: Mapped[str] = mapped_column(String(50))
    request_id: Mapped[str] = mapped_column(String(250))
    input_text: Mapped[str] = mapped_column(Text)
    output_text: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    flags: Mapped[str] = mapped_column(Text)  # JSON list
    priority: Mapped[float] = mapped_column(Float)
    sampled: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decision: Mapped[str | None] = mapped_column(String(20), nullable=True)
    error_category: Mapped[str | None] = mapped_column(String(50), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class _Audit(_Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(50))
    item_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # no foreign key: refused attempts name ids too
    detail: Mapped[str] = mapped_column(Text)  # JSON object


class _WaitingRun(_Base):
    __tablename__ = "waiting_runs"
    flow_run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    batch: Mapped[str] = mapped_column(String(200), index=True)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# The database refuses to change the audit log, whoever asks (the ORM listener below covers this store's own
# sessions; these triggers cover raw SQL and other clients).
_APPEND_ONLY = "audit log is append-only"
for _verb in ("UPDATE", "DELETE"):
    event.listen(_Audit.__table__, "after_create", DDL(
        f"CREATE TRIGGER audit_log_no_{_verb.lower()} BEFORE {_verb} ON audit_log "
        f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END").execute_if(dialect="sqlite"))
event.listen(_Audit.__table__, "after_create", DDL(
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
    f"BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$ LANGUAGE plpgsql").execute_if(dialect="postgresql"))
event.listen(_Audit.__table__, "after_create", DDL(
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()").execute_if(dialect="postgresql"))
event.listen(_Audit.__table__, "after_create", DDL(  # TRUNCATE skips row triggers
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()").execute_if(dialect="postgresql"))


def _refuse_audit_changes(session, flush_context, instances) -> None:
    for row in (*session.dirty, *session.deleted):
        if isinstance(row, _Audit):
            raise ReviewError(f"{_APPEND_ONLY}: entry {row.id} cannot be changed or deleted")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(moment: datetime | None) -> datetime | None:
    """Every time this store writes is UTC: SQLite hands it back without its zone, PostgreSQL in the session's."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


_DUMMY_HASH: str | None = None


class ReviewStore:
    def __init__(self, url: str, error_categories: tuple[str, ...] = DEFAULT_ERROR_CATEGORIES):
        """`url`: any SQLAlchemy URL, typically "sqlite:///reports/review.db"; the tables are created if missing."""
        parsed = make_url(url)
        options = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            else:  # one in-memory database shared by every thread (the web server's too)
                options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        else:  # a database server: the review page outlives its connections (server restarts, idle timeouts)
            options = {"pool_pre_ping": True}
        self.url = url
        self.error_categories = tuple(error_categories)
        if "none" not in self.error_categories:
            raise ReviewError(f"error categories {self.error_categories} must include 'none' (the default)")
        self.engine = create_engine(url, **options)
        _Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self._sessions, "before_flush", _refuse_audit_changes)

    # reviewers

    def add_reviewer(self, name: str, password: str) -> None:
        name = name.strip()
        if not name:
            raise ReviewError("a reviewer needs a name")
        if not password:
            raise ReviewError(f"reviewer {name!r} needs a password")
        with self._sessions.begin() as session:
            if session.scalar(select(_Reviewer.id).where(_Reviewer.name == name)) is not None:
                raise ReviewError(f"reviewer {name!r} already exists; pick another name")
            session.add(_Reviewer(name=name, password_hash=generate_password_hash(password), created_at=_now()))
            self._audit(session, PIPELINE_ACTOR, "add_reviewer", None, {"reviewer": name})

    def check_password(self, name: str, password: str) -> bool:
        with self._sessions() as session:
            stored = session.scalar(select(_Reviewer.password_hash).where(_Reviewer.name == name))
        if stored is None:  # hash anyway, so that a wrong name takes as long as a wrong password
            global _DUMMY_HASH
            _DUMMY_HASH = _DUMMY_HASH or generate_password_hash("not a reviewer")
            check_password_hash(_DUMMY_HASH, password)
            return False
        return check_password_hash(stored, password)

    def reviewers(self) -> list[str]:
        with self._sessions() as session:
            return list(session.scalars(select(_Reviewer.name).order_by(_Reviewer.name)))

    # the queue

    def enqueue(self, batch: str, items: list[QueueItem]) -> list[int]:
        if not batch:
            raise ReviewError("enqueue needs a batch name (e.g. the evaluation run id)")
        for position, item in enumerate(items):
            if item.sampled not in SAMPLING:
                raise ReviewError(f"item {position} ({item.candidate}, {item.request_id}): "
                                  f"sampled is {item.sampled!r}, expected one of {SAMPLING}")
            if not item.candidate:
                raise ReviewError(f"item {position} ({item.request_id}): candidate is empty; use 'model/version'")
        if not items:
            return []
        created = _now()
        with self._sessions.begin() as session:
            rows = [_Item(batch=batch, candidate=i.candidate, model=i.model, version=str(i.version),
                          request_id=i.request_id, input_text=i.input_text, output_text=i.output_text,
                          reference=i.reference or "", flags=json.dumps(list(i.flags)), priority=float(i.priority),
                          sampled=i.sampled, created_at=created, comment="") for i in items]
            session.add_all(rows)
            session.flush()
            per_candidate: dict[str, int] = {}
            for item in items:
                per_candidate[item.candidate] = per_candidate.get(item.candidate, 0) + 1
            self._audit(session, PIPELINE_ACTOR, "enqueue", None, {
                "batch": batch, "items": len(items), "flagged": sum(i.sampled == "flagged" for i in items),
                "random": sum(i.sampled == "random" for i in items), "per_candidate": per_candidate})
            return [row.id for row in rows]

    def items(self, batch: str | None = None, status: str | None = None,
              candidate: str | None = None) -> list[ItemView]:
        """Pending items first, highest priority first, then in the order they were enqueued."""
        pending_first = case((_Item.decision.is_(None), 0), else_=1)
        query = self._item_query().order_by(pending_first, _Item.priority.desc(), _Item.id)
        if batch is not None:
            query = query.where(_Item.batch == batch)
        if candidate is not None:
            query = query.where(_Item.candidate == candidate)
        if status == "pending":
            query = query.where(_Item.decision.is_(None))
        elif status == "decided":
            query = query.where(_Item.decision.is_not(None))
        elif status is not None:
            raise ReviewError(f"status {status!r} is not one of {STATUSES} (or None for every item)")
        with self._sessions() as session:
            return [self._view(*row) for row in session.execute(query)]

    def item(self, item_id: int) -> ItemView:
        with self._sessions() as session:
            row = session.execute(self._item_query().where(_Item.id == item_id)).first()
        if row is None:
            raise ReviewError(f"review item {item_id} does not exist; `medlora review list` shows the queue")
        return self._view(*row)

    def next_pending(self, batch: str | None = None) -> ItemView | None:
        pending = self.items(batch=batch, status="pending")
        return pending[0] if pending else None

    def decide(self, item_id: int, reviewer: str, decision: str, error_category: str = "none",
               comment: str = "") -> ItemView:
        """Record a reviewer's decision. Decisions are final: an item is decided once."""
        if decision not in DECISIONS:
            raise ReviewError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        if error_category not in self.error_categories:
            raise ReviewError(f"error category {error_category!r} is not one of {', '.join(self.error_categories)}")
        with self._sessions.begin() as session:
            reviewer_id = session.scalar(select(_Reviewer.id).where(_Reviewer.name == reviewer))
            if reviewer_id is None:
                raise ReviewError(f"unknown reviewer {reviewer!r}: "
                                  f"add them with `medlora review add-reviewer {reviewer}`")
            item = session.get(_Item, item_id)
            if item is None:
                raise ReviewError(f"review item {item_id} does not exist; `medlora review list` shows the queue")
            # One conditional UPDATE, so two reviewers deciding at once cannot both win.
            decided = session.execute(
                update(_Item).where(_Item.id == item_id, _Item.decision.is_(None))
                .values(decision=decision, error_category=error_category, comment=comment or "",
                        reviewer_id=reviewer_id, decided_at=_now())
                .execution_options(synchronize_session=False)).rowcount
            if decided != 1:
                session.refresh(item)
                by = session.scalar(select(_Reviewer.name).where(_Reviewer.id == item.reviewer_id))
                raise ReviewError(f"review item {item_id} was already decided ({item.decision}) by {by} at "
                                  f"{_utc(item.decided_at):%Y-%m-%d %H:%M:%S} UTC; decisions are final")
            self._audit(session, reviewer, "decide", item_id, {
                "batch": item.batch, "candidate": item.candidate, "decision": decision,
                "error_category": error_category, "comment": comment or ""})
        return self.item(item_id)

    def summary(self, batch: str | None = None) -> dict[str, dict]:
        """Per candidate: items, pending, the count of each decision and the approval rate (of those decided)."""
        counts = {d: func.sum(case((_Item.decision == d, 1), else_=0)) for d in DECISIONS}
        query = select(_Item.candidate, _Item.model, _Item.version, func.count(_Item.id),
                       func.sum(case((_Item.decision.is_(None), 1), else_=0)), *counts.values()
                       ).group_by(_Item.candidate, _Item.model, _Item.version).order_by(_Item.candidate)
        if batch is not None:
            query = query.where(_Item.batch == batch)
        result: dict[str, dict] = {}
        with self._sessions() as session:
            for candidate, model, version, total, pending, *decided in session.execute(query):
                entry = result.setdefault(candidate, {"items": 0, "pending": 0, **{d: 0 for d in DECISIONS},
                                                      "approval_rate": None, "model": model, "version": version})
                entry["items"] += int(total)
                entry["pending"] += int(pending or 0)
                for name, count in zip(DECISIONS, decided, strict=True):
                    entry[name] += int(count or 0)
        for entry in result.values():
            decided_total = sum(entry[d] for d in DECISIONS)
            entry["approval_rate"] = entry["approve"] / decided_total if decided_total else None
        return result

    def batches(self) -> list[str]:
        """Every batch, in the order they were first enqueued."""
        with self._sessions() as session:
            first_id = func.min(_Item.id)
            return list(session.scalars(select(_Item.batch).group_by(_Item.batch).order_by(first_id)))

    def latest_batch(self) -> str | None:
        with self._sessions() as session:
            return session.scalar(select(_Item.batch).order_by(_Item.id.desc()).limit(1))

    # flow runs paused until a batch is reviewed

    def register_waiting_run(self, batch: str, flow_run_id: str) -> None:
        """A Prefect flow run paused until `batch` has no pending items (see tasks/review/resume.py)."""
        try:
            flow_run_id = str(UUID(str(flow_run_id)))
        except ValueError:
            raise ReviewError(f"flow run id {flow_run_id!r} is not a UUID; pass prefect.runtime.flow_run.id") from None
        with self._sessions.begin() as session:
            if session.get(_WaitingRun, str(flow_run_id)) is None:
                session.add(_WaitingRun(flow_run_id=str(flow_run_id), batch=batch, registered_at=_now()))
                self._audit(session, PIPELINE_ACTOR, "wait_for_review", None, {"batch": batch, "flow_run_id": flow_run_id})

    def waiting_runs(self, batch: str) -> list[str]:
        with self._sessions() as session:
            return list(session.scalars(select(_WaitingRun.flow_run_id).where(_WaitingRun.batch == batch)
                                        .order_by(_WaitingRun.registered_at, _WaitingRun.flow_run_id)))

    def clear_waiting_run(self, flow_run_id: str) -> None:
        """Forget a waiting run (resumed, or gone). Both the resumer and the resumed run call this: the first wins."""
        with self._sessions.begin() as session:
            batch = session.scalar(select(_WaitingRun.batch).where(_WaitingRun.flow_run_id == str(flow_run_id)))
            cleared = session.execute(delete(_WaitingRun).where(_WaitingRun.flow_run_id == str(flow_run_id))
                                      .execution_options(synchronize_session=False)).rowcount
            if cleared:
                self._audit(session, PIPELINE_ACTOR, "stop_waiting", None,
                            {"batch": batch, "flow_run_id": str(flow_run_id)})

    # the audit log

    def log(self, actor: str, action: str, item_id: int | None = None, detail: dict | None = None) -> None:
        """Append an audit entry (logins, logouts, anything a person did that is not a decision)."""
        with self._sessions.begin() as session:
            self._audit(session, actor, action, item_id, detail or {})

    def audit(self, item_id: int | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Newest first."""
        query = select(_Audit).order_by(_Audit.id.desc())
        if item_id is not None:
            query = query.where(_Audit.item_id == item_id)
        if limit is not None:
            query = query.limit(limit)
        with self._sessions() as session:
            return [AuditEntry(id=row.id, time=_utc(row.time), actor=row.actor, action=row.action, item_id=row.item_id,
                               detail=json.loads(row.detail)) for row in session.scalars(query)]

    # internals

    @staticmethod
    def _audit(session, actor: str, action: str, item_id: int | None, detail: dict) -> None:
        session.add(_Audit(time=_now(), actor=actor[:120], action=action, item_id=item_id,
                           detail=json.dumps(detail, sort_keys=True)))

    @staticmethod
    def _item_query():
        return select(_Item, _Reviewer.name).outerjoin(_Reviewer, _Item.reviewer_id == _Reviewer.id)

    @staticmethod
    def _view(row: _Item, reviewer: str | None) -> ItemView:
        return ItemView(id=row.id, batch=row.batch, candidate=row.candidate, model=row.model, version=row.version,
                        request_id=row.request_id, input_text=row.input_text, output_text=row.output_text,
                        reference=row.reference, flags=json.loads(row.flags), priority=row.priority,
                        sampled=row.sampled, created_at=_utc(row.created_at), decision=row.decision,
                        error_category=row.error_category, comment=row.comment or "", reviewer=reviewer,
                        decided_at=_utc(row.decided_at))
