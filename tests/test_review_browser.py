"""The review page in a real headless Chromium (Debian's, driven by Playwright): a reviewer works from the
keyboard, and a second browser that has not logged in sees and changes nothing."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tasks.review.store import QueueItem, ReviewStore
from tasks.review.web import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(os.environ.get("MEDLORA_REVIEW_SCREENSHOT", "/tmp/medlora-review-item.png"))

NOTE = ("Pt is a 67 yo seen for new AF. Rate controlled on metoprolol.\nStarted apixaban 5 mg BID; no bleeding.\n"
        "Plan: echo, follow up with cardiology in 2 weeks.")


@pytest.fixture
def playwright_api():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium), as .ci/run does")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install playwright (the browser is Debian's chromium)")
    return sync_playwright


@pytest.fixture
def store(tmp_path) -> ReviewStore:
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    store.add_reviewer("alice", "alice-pw")
    store.add_reviewer("bob", "bob-pw")
    return store


@pytest.fixture
def ids(store) -> list[int]:
    return store.enqueue("eval-1", [
        QueueItem("medlora-router/3", "medlora-router", "3", "note-001", NOTE,
                  "67M with new atrial fibrillation, rate controlled on metoprolol, started on warfarin.",
                  "New AF, rate controlled; apixaban started; echo and cardiology follow-up.",
                  ["high_entropy", "unsupported_entity: warfarin"], priority=2.5, sampled="flagged"),
        QueueItem("medlora-expert-cardio/1", "medlora-expert-cardio", "1", "pubmedqa-17",
                  "Question: Does early rhythm control reduce stroke?\nContext: In a randomised trial ...", "yes", "yes",
                  [], priority=1.0),
        QueueItem("medlora-router/3", "medlora-router", "3", "note-002", "Cough for 3 days. CXR clear.",
                  "Cough, clear chest X-ray.", "Cough; CXR clear.", [], priority=0.1),
    ])


@pytest.fixture
def server(store, ids):
    httpd = make_server("127.0.0.1", 0, create_app(store, secret_key="browser-test"), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(timeout=5)
    httpd.server_close()


@pytest.fixture
def browser(playwright_api):
    with playwright_api() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, problems: list[str]):
    """A page in a fresh context (its own cookies), recording console errors (a CSP refusal shows up there)."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(5000)
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return page


def log_in(page, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Reviewer").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(f"{base}/")


def test_a_reviewer_works_from_the_keyboard_and_a_stranger_changes_nothing(browser, server, store, ids):
    from playwright.sync_api import expect

    base, problems = server, []
    alice = new_page(browser, problems)

    alice.goto(f"{base}/")
    expect(alice).to_have_url(f"{base}/login?next=%2F")
    alice.get_by_label("Reviewer").fill("alice")
    alice.get_by_label("Password").fill("alice-pw")
    alice.get_by_role("button", name="Log in").click()
    expect(alice).to_have_url(f"{base}/")
    expect(alice.locator("#queue tbody tr")).to_have_count(3)

    # First item: the highest priority one, opened with `n`. Approve, category 2, a comment, Ctrl+Enter.
    alice.keyboard.press("n")
    expect(alice).to_have_url(f"{base}/items/{ids[0]}")
    expect(alice.locator("#flags .flag")).to_have_text(["high_entropy", "unsupported_entity: warfarin"])
    expect(alice.locator("#output-text mark")).to_have_text("warfarin")
    expect(alice.get_by_label("Approve")).to_be_focused()  # autofocus: the keys work at once
    alice.screenshot(path=str(SCREENSHOT), full_page=True)
    alice.keyboard.press("a")
    alice.keyboard.press("2")
    expect(alice.get_by_label("Approve")).to_be_checked()
    expect(alice.get_by_label("Error category")).to_have_value("hallucination")
    alice.keyboard.press("c")
    alice.keyboard.type("warfarin is not in the note")
    expect(alice.get_by_label("Comment")).to_have_value("warfarin is not in the note")  # "c" itself was not typed
    alice.keyboard.press("Control+Enter")
    expect(alice).to_have_url(f"{base}/items/{ids[1]}")  # on to the next pending item

    # Second item: needs fix, category 6, Enter.
    alice.keyboard.press("f")
    alice.keyboard.press("6")
    alice.keyboard.press("Enter")
    expect(alice).to_have_url(f"{base}/items/{ids[2]}")

    first, second = store.item(ids[0]), store.item(ids[1])
    assert (first.decision, first.error_category, first.comment, first.reviewer) == \
        ("approve", "hallucination", "warfarin is not in the note", "alice")
    assert (second.decision, second.error_category, second.reviewer) == ("needs_fix", "formatting", "alice")
    assert store.item(ids[2]).pending

    alice.goto(f"{base}/audit")
    rows = alice.locator("#audit tbody tr")
    expect(rows.filter(has_text="decide")).to_have_count(2)
    expect(rows.filter(has_text="decide").first).to_contain_text("alice")
    expect(rows.filter(has_text="decide").first).to_contain_text("needs_fix")
    expect(rows.filter(has_text="login").first).to_contain_text("alice")

    # Bob, in his own browser context, has not logged in: every page sends him to the login page.
    bob = new_page(browser, problems)
    for path in (f"/items/{ids[0]}", "/", "/audit"):
        bob.goto(f"{base}{path}")
        expect(bob).to_have_url(f"{base}/login?next={path.replace('/', '%2F')}")
        assert "warfarin" not in bob.content() and "alice" not in bob.content()

    # A POST without logging in (and so without a CSRF token) is refused, and the items stay as they were.
    for item_id in (ids[0], ids[2]):
        response = bob.request.post(f"{base}/items/{item_id}", max_redirects=0,
                                    form={"decision": "reject", "error_category": "omission", "comment": "bob"})
        assert response.status in (302, 400)
        assert "bob" not in response.text() and "warfarin" not in response.text()
    assert store.item(ids[0]) == first
    assert store.item(ids[2]).pending

    # Once logged in, Bob sees the queue; Alice's decision is read-only for him.
    log_in(bob, base, "bob", "bob-pw")
    expect(bob.locator("#queue tbody tr")).to_have_count(3)
    expect(bob.locator("#queue tbody tr.decided")).to_have_count(2)
    bob.goto(f"{base}/items/{ids[0]}")
    expect(bob.locator("#decision-form")).to_have_count(0)
    expect(bob.locator("#decided")).to_contain_text("approve")
    expect(bob.locator("#decided")).to_contain_text("alice")
    bob.keyboard.press("r")
    bob.keyboard.press("Enter")
    expect(bob).to_have_url(f"{base}/items/{ids[0]}")
    assert store.item(ids[0]) == first

    assert problems == []  # no script errors, no content-security-policy refusals
