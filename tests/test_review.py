"""The human-review queue: the store, the reviewers' web page (Flask test client) and `medlora review`."""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest
from sqlalchemy import create_engine, create_mock_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tasks.review.cli import add_review_commands, run_review_command
from tasks.review.resume import after_decision
from tasks.review.store import QueueItem, ReviewError, ReviewStore, _Audit, _Base
from tasks.review.web import create_app

NOTE = "Pt seen for AF. Started on apixaban 5 mg BID. No bleeding. Follow up with cardiology in 2 weeks."
SUMMARY = "Atrial fibrillation; started warfarin."
ROUTER, EXPERT = "medlora-router/3", "medlora-expert-cardio/1"


def queue_items() -> list[QueueItem]:
    return [
        QueueItem(ROUTER, "medlora-router", "3", "note-001", NOTE, SUMMARY, "AF; apixaban started.",
                  ["high_entropy", "unsupported_entity: warfarin"], priority=2.5, sampled="flagged"),
        QueueItem(ROUTER, "medlora-router", "3", "note-002", "Pt with cough x3 days. CXR clear.", "Cough, CXR clear.",
                  "Cough; clear chest film.", [], priority=0.1),
        QueueItem(EXPERT, "medlora-expert-cardio", "1", "pubmedqa-17", "Question: does X help? Context: ...", "yes",
                  "yes", [], priority=0.5),
    ]


pytest_plugins = ["tests.servers"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Every store test on SQLite (one machine) and on a real PostgreSQL (a team); the latter skips, saying
    why, where PostgreSQL is not installed."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review' / 'review.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(database_url) -> ReviewStore:
    store = ReviewStore(database_url)
    store.add_reviewer("alice", "alice-pw")
    store.add_reviewer("bob", "bob-pw")
    return store


@pytest.fixture
def ids(store) -> list[int]:
    return store.enqueue("eval-1", queue_items())


# the store


def test_pending_items_come_first_highest_priority_first(store, ids):
    assert [i.request_id for i in store.items()] == ["note-001", "pubmedqa-17", "note-002"]
    store.decide(ids[0], "alice", "approve")
    assert [i.request_id for i in store.items()] == ["pubmedqa-17", "note-002", "note-001"]
    assert [i.request_id for i in store.items(status="pending")] == ["pubmedqa-17", "note-002"]
    assert [i.request_id for i in store.items(status="decided")] == ["note-001"]
    assert [i.request_id for i in store.items(candidate=EXPERT)] == ["pubmedqa-17"]
    assert store.next_pending("eval-1").request_id == "pubmedqa-17"
    assert store.next_pending("no-such-batch") is None


def test_an_item_keeps_what_was_enqueued(store, ids):
    item = store.item(ids[0])
    assert (item.batch, item.candidate, item.model, item.version) == ("eval-1", ROUTER, "medlora-router", "3")
    assert (item.input_text, item.output_text, item.reference) == (NOTE, SUMMARY, "AF; apixaban started.")
    assert item.flags == ["high_entropy", "unsupported_entity: warfarin"]
    assert (item.priority, item.sampled, item.pending) == (2.5, "flagged", True)
    assert item.created_at.tzinfo is not None


def test_a_decision_records_who_decided_when_and_counts_in_the_summary(store, ids):
    before = datetime.now(timezone.utc)
    decided = store.decide(ids[0], "alice", "reject", "hallucination", "warfarin is not in the note")
    assert (decided.decision, decided.error_category, decided.reviewer) == ("reject", "hallucination", "alice")
    assert decided.comment == "warfarin is not in the note"
    assert before <= decided.decided_at <= datetime.now(timezone.utc)
    store.decide(ids[1], "bob", "approve")
    summary = store.summary("eval-1")
    assert summary[ROUTER] == {"items": 2, "pending": 0, "approve": 1, "reject": 1, "needs_fix": 0,
                               "approval_rate": 0.5, "model": "medlora-router", "version": "3"}
    assert summary[EXPERT]["approval_rate"] is None  # nothing decided yet: no rate, not 0%
    assert summary[EXPERT]["pending"] == 1


def test_decisions_are_final_and_the_refusal_says_who_decided(store, ids):
    store.decide(ids[0], "alice", "approve")
    with pytest.raises(ReviewError, match=r"already decided \(approve\) by alice at .* UTC; decisions are final"):
        store.decide(ids[0], "bob", "reject", "omission")
    assert store.item(ids[0]).decision == "approve"


def test_an_unknown_reviewer_cannot_decide(store, ids):
    with pytest.raises(ReviewError, match="unknown reviewer 'mallory'.*add-reviewer mallory"):
        store.decide(ids[0], "mallory", "approve")
    assert store.item(ids[0]).pending


def test_a_bad_category_or_decision_is_refused_with_the_choices(store, ids):
    with pytest.raises(ReviewError, match="error category 'typo' is not one of none, hallucination, omission"):
        store.decide(ids[0], "alice", "reject", "typo")
    with pytest.raises(ReviewError, match="decision 'maybe' is not one of approve, reject, needs_fix"):
        store.decide(ids[0], "alice", "maybe")
    assert store.item(ids[0]).pending


def test_a_store_can_have_its_own_error_categories(database_url):
    store = ReviewStore(database_url, error_categories=("none", "dosage"))
    store.add_reviewer("alice", "pw")
    [item_id] = store.enqueue("b", queue_items()[:1])
    assert store.decide(item_id, "alice", "needs_fix", "dosage").error_category == "dosage"


def test_a_missing_item_says_how_to_see_the_queue(store):
    with pytest.raises(ReviewError, match="review item 7 does not exist.*medlora review list"):
        store.item(7)


def test_passwords_are_hashed_and_checked(store):
    assert store.check_password("alice", "alice-pw")
    assert not store.check_password("alice", "bob-pw")
    assert not store.check_password("nobody", "alice-pw")
    with store.engine.connect() as connection:
        hashes = [row[0] for row in connection.execute(text("SELECT password_hash FROM reviewers"))]
    assert all("alice-pw" not in h and "bob-pw" not in h for h in hashes)
    with pytest.raises(ReviewError, match="reviewer 'alice' already exists"):
        store.add_reviewer("alice", "again")
    assert store.reviewers() == ["alice", "bob"]


def test_the_audit_log_records_actions_newest_first_without_note_text(store, ids):
    store.decide(ids[0], "alice", "needs_fix", "negation", "check the negation")
    store.log("bob", "login")
    entries = store.audit()
    assert [e.action for e in entries] == ["login", "decide", "enqueue", "add_reviewer", "add_reviewer"]
    decide = entries[1]
    assert (decide.actor, decide.item_id) == ("alice", ids[0])
    assert decide.detail == {"batch": "eval-1", "candidate": ROUTER, "decision": "needs_fix",
                             "error_category": "negation", "comment": "check the negation"}
    assert entries[2].detail["items"] == 3 and entries[2].detail["flagged"] == 1
    assert [e.action for e in store.audit(item_id=ids[0])] == ["decide"]
    assert len(store.audit(limit=2)) == 2
    logged = json.dumps([e.detail for e in entries])
    for item in queue_items():
        for note_text in (item.input_text, item.output_text, item.reference):
            assert note_text not in logged


def test_the_audit_log_is_append_only_even_for_raw_sql(store, ids):
    statements = ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log", "DELETE FROM audit_log WHERE id = 1"]
    if store.engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_log")
    for statement in statements:
        with pytest.raises(DBAPIError, match="audit log is append-only"):
            with store.engine.begin() as connection:
                connection.execute(text(statement))
    with pytest.raises(ReviewError, match="append-only"):
        with store._sessions.begin() as session:
            session.get(_Audit, 1).actor = "mallory"
    assert {e.actor for e in store.audit()} == {"pipeline"}


def test_the_append_only_trigger_is_part_of_the_postgresql_schema():
    statements = []
    engine = create_mock_engine("postgresql+psycopg://",
                                lambda sql, *a, **k: statements.append(str(sql.compile(dialect=engine.dialect))))
    _Base.metadata.create_all(engine, checkfirst=False)
    ddl = "\n".join(statements)
    assert "TIMESTAMP WITH TIME ZONE" in ddl
    assert "BEFORE UPDATE OR DELETE ON audit_log" in ddl and "RAISE EXCEPTION 'audit log is append-only'" in ddl
    assert "BEFORE TRUNCATE ON audit_log" in ddl


def test_a_reopened_store_keeps_everything(store, ids):
    store.decide(ids[0], "alice", "approve")
    reopened = ReviewStore(store.url)
    assert reopened.item(ids[0]).reviewer == "alice"
    assert reopened.reviewers() == ["alice", "bob"]
    assert reopened.summary()[ROUTER]["approve"] == 1
    assert reopened.batches() == ["eval-1"] and reopened.latest_batch() == "eval-1"
    with pytest.raises(DBAPIError, match="append-only"):  # the triggers were created with the tables
        with reopened.engine.begin() as connection:
            connection.execute(text("DELETE FROM audit_log"))
    reopened.log("bob", "login")  # and a second store on the same database appends after the first's entries
    assert [e.action for e in store.audit(limit=2)] == ["login", "decide"]


def test_times_are_utc_even_from_a_database_server_in_another_zone(database_url):
    if database_url.startswith("postgresql"):  # PostgreSQL hands times back in the session's zone
        engine = create_engine(database_url)
        with engine.begin() as connection:
            connection.execute(text(f"ALTER DATABASE {make_url(database_url).database} SET timezone TO 'Asia/Kolkata'"))
        engine.dispose()
    store = ReviewStore(database_url)
    store.add_reviewer("alice", "pw")
    [item_id] = store.enqueue("b", queue_items()[:1])
    before = datetime.now(timezone.utc)
    item = store.decide(item_id, "alice", "approve")
    assert item.decided_at.utcoffset() == item.created_at.utcoffset() == timedelta(0)
    assert before <= item.decided_at <= datetime.now(timezone.utc)
    assert {e.time.utcoffset() for e in store.audit()} == {timedelta(0)}
    with pytest.raises(ReviewError, match=f"by alice at {item.decided_at:%Y-%m-%d %H:%M:%S} UTC"):
        store.decide(item_id, "alice", "reject", "omission")


def test_a_postgresql_password_can_stay_out_of_params_yaml(postgres_url, monkeypatch):
    """libpq's PGPASSWORD (or ~/.pgpass) supplies it: review.database can be committed without a secret."""
    url = make_url(postgres_url)
    monkeypatch.setenv("PGPASSWORD", url.password)
    store = ReviewStore(url.set(password=None).render_as_string(hide_password=False))
    store.add_reviewer("alice", "pw")
    assert store.reviewers() == ["alice"]


def test_batches_in_the_order_they_were_enqueued(store):
    assert store.batches() == [] and store.latest_batch() is None
    store.enqueue("eval-1", queue_items()[:1])
    store.enqueue("eval-2", queue_items()[1:])
    assert store.batches() == ["eval-1", "eval-2"] and store.latest_batch() == "eval-2"
    assert set(store.summary("eval-2")) == {ROUTER, EXPERT} and store.summary("eval-1")[ROUTER]["items"] == 1


def test_enqueue_refuses_an_unknown_sampling(store):
    bad = queue_items()[:1]
    bad[0].sampled = "everything"
    with pytest.raises(ReviewError, match="item 0 .*sampled is 'everything'"):
        store.enqueue("eval-1", bad)
    assert store.items() == []


def test_waiting_runs_are_kept_per_batch_until_cleared(store):
    store.register_waiting_run("eval-1", "0f8fad5b-d9cb-469f-a165-70867728950e")
    store.register_waiting_run("eval-1", "0f8fad5b-d9cb-469f-a165-70867728950e")  # twice is once
    assert store.waiting_runs("eval-1") == ["0f8fad5b-d9cb-469f-a165-70867728950e"]
    assert store.waiting_runs("eval-2") == []
    store.clear_waiting_run("0f8fad5b-d9cb-469f-a165-70867728950e")
    store.clear_waiting_run("0f8fad5b-d9cb-469f-a165-70867728950e")  # the resumer and the resumed run both clear
    assert store.waiting_runs("eval-1") == []
    assert [e.action for e in store.audit(limit=2)] == ["stop_waiting", "wait_for_review"]
    with pytest.raises(ReviewError, match="not a UUID"):
        store.register_waiting_run("eval-1", "run-7")


# the web page (Flask test client)


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', html).group(1)


def log_in(client, name: str, password: str):
    token = csrf_token(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"csrf_token": token, "name": name, "password": password})


@pytest.fixture
def app(store, ids):
    app = create_app(store, secret_key="test-secret")
    app.config["TESTING"] = True
    return app


@pytest.mark.parametrize("path", ["/", "/items/1", "/audit"])
def test_anonymous_requests_go_to_the_login_page(app, path):
    response = app.test_client().get(path)
    assert response.status_code == 302 and response.location.startswith("/login?next=")


def test_a_post_without_csrf_token_is_refused(app, store, ids):
    client = app.test_client()
    response = client.post("/login", data={"name": "alice", "password": "alice-pw"})
    assert response.status_code == 400 and b"security token" in response.data
    assert b"alice-pw" not in response.data
    log_in(client, "alice", "alice-pw")
    response = client.post(f"/items/{ids[0]}", data={"decision": "approve", "error_category": "none"})
    assert response.status_code == 400
    assert store.item(ids[0]).pending


def test_a_wrong_password_is_refused_and_audited(app, store):
    client = app.test_client()
    response = log_in(client, "alice", "guess")
    assert response.status_code == 200 and b"Wrong reviewer name or password" in response.data
    assert client.get("/").status_code == 302
    log_in(client, "hunter2", "guess")  # a name that is no reviewer (maybe a password) stays out of the log
    failed = [e for e in store.audit() if e.action == "login_failed"]
    assert [(e.actor, e.detail["reason"]) for e in failed] == [("(unknown reviewer)", "unknown reviewer"),
                                                              ("alice", "wrong password")]
    assert "hunter2" not in json.dumps([e.detail for e in store.audit()])


def test_the_session_cookie_is_httponly_and_samesite_strict(app):
    cookie = log_in(app.test_client(), "alice", "alice-pw").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_login_returns_to_the_page_asked_for_but_never_off_site(app):
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    form = {"csrf_token": token, "name": "alice", "password": "alice-pw"}
    assert client.post("/login?next=/audit", data=form).location == "/audit"
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    form["csrf_token"] = token
    assert client.post("/login?next=https://evil.example/", data=form).location == "/"


def test_the_queue_shows_counts_per_candidate_and_pending_items_first(app, ids):
    client = app.test_client()
    log_in(client, "alice", "alice-pw")
    page = client.get("/").get_data(as_text=True)
    assert ROUTER in page and EXPERT in page
    links = re.findall(r'<td class="num"><a href="/items/(\d+)">', page)
    assert links == [str(ids[0]), str(ids[2]), str(ids[1])]


def test_an_item_page_escapes_the_text_and_highlights_flagged_terms(app, store):
    [item_id] = store.enqueue("eval-2", [QueueItem(ROUTER, "medlora-router", "3", "note-9",
                                                   "<script>alert(1)</script> on warfarin", "Warfarin 5 mg", "",
                                                   ["unsupported_entity: warfarin"])])
    client = app.test_client()
    log_in(client, "alice", "alice-pw")
    page = client.get(f"/items/{item_id}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<mark>warfarin</mark>" in page and "<mark>Warfarin</mark>" in page
    assert 'class="flag">unsupported_entity: warfarin' in page


def test_deciding_through_the_form_moves_on_to_the_next_pending_item(app, store, ids):
    client = app.test_client()
    log_in(client, "alice", "alice-pw")
    page = client.get(f"/items/{ids[0]}").get_data(as_text=True)
    assert '<label for="error_category">' in page and "autofocus" in page and 'id="shortcuts"' in page
    response = client.post(f"/items/{ids[0]}", data={"csrf_token": csrf_token(page), "decision": "reject",
                                                     "error_category": "hallucination", "comment": "warfarin?"})
    assert response.status_code == 302 and response.location == f"/items/{ids[2]}"
    decided = store.item(ids[0])
    assert (decided.decision, decided.error_category, decided.comment, decided.reviewer) == \
        ("reject", "hallucination", "warfarin?", "alice")
    page = client.get(f"/items/{ids[0]}").get_data(as_text=True)
    assert 'id="decided"' in page and 'id="decision-form"' not in page  # read-only now
    response = client.post(f"/items/{ids[0]}", data={"csrf_token": csrf_token(page), "decision": "approve",
                                                     "error_category": "none"})
    assert b"decisions are final" in response.data
    assert store.item(ids[0]).decision == "reject"


def test_a_form_without_a_decision_is_shown_again_with_the_reason(app, store, ids):
    client = app.test_client()
    log_in(client, "alice", "alice-pw")
    page = client.get(f"/items/{ids[0]}").get_data(as_text=True)
    response = client.post(f"/items/{ids[0]}", data={"csrf_token": csrf_token(page), "error_category": "none"})
    assert response.status_code == 200 and b"choose a decision" in response.data
    assert store.item(ids[0]).pending


def test_the_last_decision_returns_to_the_queue(app, store, ids):
    client = app.test_client()
    log_in(client, "bob", "bob-pw")
    for item_id in ids:
        page = client.get(f"/items/{item_id}").get_data(as_text=True)
        response = client.post(f"/items/{item_id}", data={"csrf_token": csrf_token(page), "decision": "approve",
                                                          "error_category": "none"})
    assert response.location == "/?batch=eval-1"
    assert b"Queue complete" in client.get(response.location).data


def test_the_audit_page_lists_logins_and_decisions(app, store, ids):
    client = app.test_client()
    log_in(client, "alice", "alice-pw")
    store.decide(ids[1], "alice", "approve")
    page = client.get("/audit").get_data(as_text=True)
    assert "login" in page and "decide" in page and f'href="/items/{ids[1]}"' in page
    token = csrf_token(page)
    assert client.post("/logout", data={"csrf_token": token}).location == "/login"
    assert client.get("/audit").status_code == 302
    assert [e.action for e in store.audit(limit=3)] == ["logout", "decide", "login"]


# the command line


@pytest.fixture
def review(tmp_path, store):
    parser = argparse.ArgumentParser(prog="medlora")
    add_review_commands(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(["review", *argv])
        assert args.command == "review"
        return run_review_command(args, tmp_path, store)

    return run


def test_cli_decide_list_and_status(review, store, ids, capsys):
    assert review("decide", str(ids[0]), "--decision", "reject", "--reviewer", "alice", "--category", "omission",
                  "--comment", "misses the plan") == 0
    assert store.item(ids[0]).error_category == "omission"
    capsys.readouterr()
    assert review("list", "--pending") == 0
    listed = capsys.readouterr().out
    assert "note-002" in listed and "pubmedqa-17" in listed and "note-001" not in listed
    assert review("status", "--batch", "eval-1") == 0
    status = capsys.readouterr().out
    assert re.search(rf"{re.escape(ROUTER)}\s*│\s*2\s*│\s*1\s*│\s*0\s*│\s*1\s*│\s*0\s*│\s*0%", status)
    assert review("show", str(ids[0])) == 0
    shown = capsys.readouterr().out
    assert NOTE in shown and "unsupported_entity: warfarin" in shown and "reject" in shown
    assert review("audit", "--item", str(ids[0])) == 0
    assert "misses the plan" in capsys.readouterr().out


def test_cli_decide_takes_the_reviewer_from_the_environment(review, store, ids, monkeypatch, capsys):
    monkeypatch.setenv("MEDLORA_REVIEWER", "bob")
    assert review("decide", str(ids[1]), "--decision", "approve") == 0
    assert store.item(ids[1]).reviewer == "bob"
    monkeypatch.setenv("MEDLORA_REVIEWER", "mallory")
    assert review("decide", str(ids[2]), "--decision", "approve") == 2
    assert "error: unknown reviewer 'mallory'" in capsys.readouterr().err
    monkeypatch.delenv("MEDLORA_REVIEWER")
    assert review("decide", str(ids[2]), "--decision", "approve") == 2
    assert "--reviewer NAME or set MEDLORA_REVIEWER" in capsys.readouterr().err


def test_cli_refusals_print_an_error_and_return_2(review, store, ids, capsys):
    assert review("decide", str(ids[0]), "--decision", "approve", "--reviewer", "alice", "--category", "typo") == 2
    assert "error: error category 'typo' is not one of" in capsys.readouterr().err
    assert review("show", "99") == 2
    assert "error: review item 99 does not exist" in capsys.readouterr().err


def test_cli_decides_every_pending_item_of_the_latest_batch(review, store, ids):
    [later] = store.enqueue("eval-2", queue_items()[:1])
    assert review("decide", "--all-pending", "--decision", "approve", "--reviewer", "alice") == 0
    assert store.item(later).decision == "approve"
    assert all(store.item(i).pending for i in ids)  # eval-1 is not the latest batch


def test_cli_add_reviewer_asks_for_the_password_twice(review, store, monkeypatch, capsys):
    answers = iter(["s3cret", "s3cret", "one", "other"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert review("add-reviewer", "carol") == 0
    assert store.check_password("carol", "s3cret")
    assert review("add-reviewer", "dave") == 2
    assert "passwords differ" in capsys.readouterr().err and "dave" not in store.reviewers()


# resuming the pipeline when a batch is complete


def test_an_unreachable_prefect_is_a_warning_and_the_run_stays_registered(review, store, ids, capsys):
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    run_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    store.register_waiting_run("eval-1", run_id)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        assert review("decide", "--all-pending", "--decision", "approve", "--reviewer", "alice") == 0
    assert all(store.item(i).decision == "approve" for i in ids)
    assert f"flow run {run_id} could not be resumed" in capsys.readouterr().err
    assert store.waiting_runs("eval-1") == [run_id]


def test_finishing_a_batch_resumes_the_flow_run_waiting_for_it(store, ids, prefect_api, review, capsys):
    from prefect import flow, get_client
    from prefect.flow_runs import pause_flow_run
    from prefect.input import RunInput
    from prefect.runtime import flow_run

    class ReviewDone(RunInput):
        queue_complete: bool

    @flow
    def wait_for_review(url: str) -> bool:
        ReviewStore(url).register_waiting_run("eval-1", flow_run.id)
        return pause_flow_run(wait_for_input=ReviewDone, timeout=60, poll_interval=1).queue_complete

    def paused(run_ids: list[str]) -> bool:
        with get_client(sync_client=True) as client:
            return bool(run_ids) and client.read_flow_run(UUID(run_ids[0])).state.is_paused()

    result = {}
    runner = threading.Thread(target=lambda: result.update(done=wait_for_review(store.url)))
    runner.start()
    deadline = time.monotonic() + 60
    while not paused(store.waiting_runs("eval-1")) and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = "0f8fad5b-d9cb-469f-a165-70867728950e"  # a run Prefect does not know (its server was reset, say)
    store.register_waiting_run("eval-1", gone)
    assert review("decide", str(ids[0]), "--decision", "approve", "--reviewer", "alice") == 0
    assert len(store.waiting_runs("eval-1")) == 2  # items still pending: the runs keep waiting
    assert review("decide", "--all-pending", "--decision", "approve", "--reviewer", "bob") == 0
    runner.join(timeout=60)
    assert result == {"done": True}
    assert store.waiting_runs("eval-1") == []
    assert f"flow run {gone} no longer waits for review batch eval-1" in capsys.readouterr().err
    assert after_decision(store, "eval-1") == []  # nothing left to resume
