"""`medlora review`: reviewers, the queue, decisions, the audit log and the reviewers' web page."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tasks.review.resume import after_decision, resume_waiting_runs
from tasks.review.store import DECISIONS, ItemView, ReviewError, ReviewStore

__all__ = ["add_review_commands", "run_review_command", "after_decision"]

REVIEWER_VARIABLE = "MEDLORA_REVIEWER"


def add_review_commands(commands) -> None:
    """Add `review` and its actions to medlora's argparse subparsers."""
    review = commands.add_parser("review", help="human review of model outputs: reviewers, queue, decisions, web page")
    actions = review.add_subparsers(dest="review_action", required=True, metavar="ACTION")

    add = actions.add_parser("add-reviewer", help="register a reviewer (asks for the password unless --password)")
    add.add_argument("name")
    add.add_argument("--password", help="the password (default: asked twice, not echoed)")

    listing = actions.add_parser("list", help="the queue: pending items first, highest priority first")
    listing.add_argument("--batch", help="only this batch (default: every batch)")
    listing.add_argument("--pending", action="store_true", help="only items still waiting for a decision")
    listing.add_argument("--candidate", help="only this candidate (model/version)")

    show = actions.add_parser("show", help="one item: the de-identified input, the output, the reference, the flags")
    show.add_argument("id", type=int)

    decide = actions.add_parser("decide", help="record a decision (final) for one item, "
                                               "or for every pending item of the latest batch")
    which = decide.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="the item")
    which.add_argument("--all-pending", action="store_true",
                       help="decide every pending item of the latest batch the same way (scripted review)")
    decide.add_argument("--decision", required=True, choices=DECISIONS)
    decide.add_argument("--reviewer", help=f"a registered reviewer (default: ${REVIEWER_VARIABLE})")
    decide.add_argument("--category", default="none", help="error category (default: none)")
    decide.add_argument("--comment", default="")

    status = actions.add_parser("status", help="per candidate: items, pending, decisions and approval rate")
    status.add_argument("--batch", help="only this batch (default: every batch)")

    audit = actions.add_parser("audit", help="the audit log, newest first")
    audit.add_argument("--item", type=int, help="only entries about this item")
    audit.add_argument("--limit", type=int, default=50, help="at most this many entries (default: 50)")

    serve = actions.add_parser("serve", help="the reviewers' web page "
                                             "(set MEDLORA_REVIEW_SECRET to keep logins across restarts)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765)

    resume = actions.add_parser("resume", help="resume the pipeline runs waiting for a batch whose review is complete")
    resume.add_argument("--batch", help="default: the latest batch")


def run_review_command(args, root: Path, store: ReviewStore) -> int:
    """Run one `medlora review` action: 0 done, 2 refused (the message says why)."""
    out = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    try:
        return _ACTIONS[args.review_action](args, store, out, err)
    except ReviewError as error:
        err.print(Text.assemble(("error:", "red"), f" {error}"))
        return 2


def _add_reviewer(args, store: ReviewStore, out: Console, err: Console) -> int:
    password = args.password
    if password is None:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ReviewError("the two passwords differ; run add-reviewer again")
    store.add_reviewer(args.name, password)
    err.print(f"added reviewer {args.name}")
    return 0


def _list(args, store: ReviewStore, out: Console, err: Console) -> int:
    items = store.items(batch=args.batch, status="pending" if args.pending else None, candidate=args.candidate)
    table = Table(title=f"review queue{f' · batch {args.batch}' if args.batch else ''}: {len(items)} items")
    for column in ("id", "batch", "candidate", "request", "sampled", "flags", "decision"):
        table.add_column(column, justify="right" if column == "id" else "left", no_wrap=column != "flags")
    for item in items:
        table.add_row(str(item.id), Text(item.batch), Text(item.candidate), Text(item.request_id), item.sampled,
                      Text(", ".join(item.flags)), _decision_text(item))
    out.print(table)
    return 0


def _show(args, store: ReviewStore, out: Console, err: Console) -> int:
    item = store.item(args.id)
    out.print(Text.assemble((f"item {item.id}", "bold"), f"  {item.candidate}  request {item.request_id}  batch "
                            f"{item.batch}  sampled {item.sampled}  priority {item.priority:g}"))
    out.print(Text.assemble(("flags: ", "bold"), (", ".join(item.flags) or "none", "yellow" if item.flags else "")))
    for title, text in (("input (de-identified)", item.input_text), ("output", item.output_text),
                        ("reference", item.reference or "(none)")):
        out.rule(title, align="left")
        out.print(Text(text))  # Text, not markup: notes may hold brackets
    out.rule(align="left")
    out.print(Text.assemble(("decision: ", "bold"), _decision_text(item)))
    return 0


def _decide(args, store: ReviewStore, out: Console, err: Console) -> int:
    reviewer = args.reviewer or os.environ.get(REVIEWER_VARIABLE)
    if not reviewer:
        raise ReviewError(f"who decides? pass --reviewer NAME or set {REVIEWER_VARIABLE}")
    if args.all_pending:
        batch = store.latest_batch()
        if batch is None:
            raise ReviewError("the review queue is empty: nothing to decide")
        items = store.items(batch=batch, status="pending")
    else:
        item = store.item(args.id)
        batch, items = item.batch, [item]
    for item in items:
        decided = store.decide(item.id, reviewer, args.decision, args.category, args.comment)
        err.print(f"item {decided.id} ({decided.candidate}, request {decided.request_id}): {decided.decision}")
    if args.all_pending:
        err.print(f"decided {len(items)} pending items of batch {batch}")
    after_decision(store, batch, err)
    return 0


def _status(args, store: ReviewStore, out: Console, err: Console) -> int:
    summary = store.summary(args.batch)
    table = Table(title=f"review status{f' · batch {args.batch}' if args.batch else ''}")
    for column in ("candidate", "items", "pending", *DECISIONS, "approval rate"):
        table.add_column(column, justify="left" if column == "candidate" else "right", no_wrap=True)
    for candidate, counts in summary.items():
        rate = counts["approval_rate"]
        table.add_row(Text(candidate), *(str(counts[k]) for k in ("items", "pending", *DECISIONS)),
                      "-" if rate is None else f"{rate:.0%}")
    out.print(table)
    return 0


def _audit(args, store: ReviewStore, out: Console, err: Console) -> int:
    table = Table(title="audit log, newest first")
    for column in ("time (UTC)", "actor", "action", "item", "detail"):
        table.add_column(column)
    for entry in store.audit(item_id=args.item, limit=args.limit):
        detail = ", ".join(f"{key}={json.dumps(value)}" for key, value in entry.detail.items())
        table.add_row(f"{entry.time:%Y-%m-%d %H:%M:%S}", Text(entry.actor), entry.action,
                      "" if entry.item_id is None else str(entry.item_id), Text(detail))
    out.print(table)
    return 0


def _serve(args, store: ReviewStore, out: Console, err: Console) -> int:
    from tasks.review.web import create_app

    app = create_app(store)
    err.print(f"review page on http://{args.host}:{args.port}/ (Ctrl+C to stop)")
    try:
        from waitress import serve
    except ImportError:
        app.run(host=args.host, port=args.port)
    else:
        serve(app, host=args.host, port=args.port)
    return 0


def _resume(args, store: ReviewStore, out: Console, err: Console) -> int:
    batch = args.batch or store.latest_batch()
    if batch is None:
        raise ReviewError("the review queue is empty: no batch to resume")
    pending = len(store.items(batch=batch, status="pending"))
    if pending:
        raise ReviewError(f"batch {batch} still has {pending} pending items; the runs resume when it has none")
    waiting = store.waiting_runs(batch)
    resumed = resume_waiting_runs(store, batch, err)
    err.print(f"batch {batch}: {len(resumed)} of {len(waiting)} waiting runs resumed")
    return 0 if len(resumed) == len(waiting) else 1


def _decision_text(item: ItemView) -> Text:
    if item.pending:
        return Text("pending", style="dim")
    style = {"approve": "green", "reject": "red", "needs_fix": "yellow"}[item.decision]
    text = Text(item.decision, style=style)
    if item.error_category and item.error_category != "none":
        text.append(f" ({item.error_category})")
    return text.append(f" by {item.reviewer}")


_ACTIONS = {"add-reviewer": _add_reviewer, "list": _list, "show": _show, "decide": _decide, "status": _status,
            "audit": _audit, "serve": _serve, "resume": _resume}
