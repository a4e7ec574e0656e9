"""The memory inspector (``/ui``) in real headless Chromium (Debian's ``chromium``, driven by
Playwright with the system browser; nothing is downloaded). Leaves a screenshot in
``artifacts/ui-inspector.png``, and writes the README's screenshots (``docs/ui-*.png``) from a
gateway of its own holding the same data every run."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import TEAM_KEY, GatewayProcess, start_gateway
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
# README's screenshots: rewritten only when asked (MEMGATE_SCREENSHOTS=docs), so that a test run
# leaves the tracked files alone; otherwise they go beside the other artifacts
DOCS = Path(__file__).resolve().parents[2] / (
    "docs" if os.environ.get("MEMGATE_SCREENSHOTS") == "docs" else "artifacts"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def watch(page: Page, origin: str) -> tuple[list[str], list[str]]:
    """Every URL the page requests, and every console error it logs."""
    urls: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return urls, errors


def api(gateway: GatewayProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, gateway.url + path, timeout=60, **kw)


def test_inspector_search_page_delete_erase(gateway: GatewayProcess, page: Page) -> None:
    name = "ui-" + uuid.uuid4().hex[:8]
    facts = [f"Grocery list item number {i}: oat milk" for i in range(22)] + [
        "Keeps a red sea kayak in the garage",
        "Learning to play the cello",
        "Allergic to peanuts",
    ]
    memories = [
        {"content": text, "created_at": f"2024-03-{i + 1:02d}T08:30:00Z", "role": "fact"}
        for i, text in enumerate(facts)
    ]
    memories[-2]["metadata"] = {"source": "lesson", "level": 3}
    added = api(gateway, "POST", "/v1/memory/memories", params={"namespace": name},
                json={"memories": memories})  # fmt: skip
    assert added.status_code == 200, added.text
    ids = added.json()["ids"]
    urls, errors = watch(page, gateway.url)

    page.goto(gateway.url + "/ui")
    expect(page).to_have_title("Memory inspector · memgate")
    # the landing page lists the namespaces (no keys configured: everyone is admin)
    card = page.locator(f'.ns-card[data-namespace="{name}"]')
    cards = page.locator("#ns-list .ns-card")
    more = page.get_by_role("button", name="Show more namespaces")
    expect(cards.first).to_be_visible()  # the first page has come
    while not card.count() and more.is_visible():
        shown = cards.count()
        more.click()
        expect(cards).not_to_have_count(shown)  # that page came before the next click
    expect(card).to_contain_text("25 memories")
    page.get_by_label("Namespace", exact=True).fill(name)
    page.get_by_role("button", name="Open namespace").click()
    expect(page.locator("#landing")).to_be_hidden()
    rows = page.locator("#memories tbody tr")
    expect(rows).to_have_count(20)
    expect(page.locator("#ns-total")).to_have_text("25 memories")
    expect(rows.first).to_contain_text("Allergic to peanuts")
    expect(rows.first).to_contain_text("2024-03-25 08:30:00")
    expect(page.get_by_role("status")).to_contain_text(f"Namespace {name}: 20+ memories")

    page.get_by_role("button", name="Older →").click()
    expect(page.locator("#page-label")).to_have_text("Page 2")
    expect(rows).to_have_count(5)
    expect(rows.last).to_contain_text("Grocery list item number 0")
    expect(page.get_by_role("button", name="Older →")).to_be_disabled()
    page.get_by_role("button", name="← Newer").click()
    expect(page.locator("#page-label")).to_have_text("Page 1")
    expect(rows).to_have_count(20)

    page.get_by_label("Search text").fill("boats and water sports")
    page.get_by_label("k", exact=True).fill("3")
    page.get_by_role("button", name="Search", exact=True).click()
    hits = page.locator("#hits li")
    expected = api(gateway, "POST", "/v1/memory/search", params={"namespace": name},
                   json={"query": "boats and water sports", "k": 3}).json()["data"]  # fmt: skip
    assert expected[0]["id"] == ids[22]
    expect(hits).to_have_count(len(expected))
    for hit, want in zip(hits.all(), expected, strict=True):
        expect(hit).to_have_attribute("data-id", want["id"])
        expect(hit.locator(".score")).to_have_text(f"{want['score']:.3f}")
        expect(hit.locator("time")).to_have_attribute("datetime", want["created_at"])
        expect(hit.locator(".content")).to_have_text(want["content"])
    expect(hits.first).to_contain_text("2024-03-23 08:30:00")

    page.get_by_label("Search text").fill("music lessons")
    page.get_by_role("button", name="Search", exact=True).click()
    cello = page.locator(f'#hits li[data-id="{ids[23]}"]')
    expect(cello.locator(".meta dt")).to_have_text(["level", "source"])
    expect(cello.locator(".meta dd")).to_have_text(["3", "lesson"])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-inspector.png"), full_page=True)

    # deleting asks first: keeping it deletes nothing
    page.get_by_role("button", name=f"Delete memory {ids[23]}").click()
    expect(page.locator(f'tr[data-id="{ids[23]}"]')).to_contain_text("Delete for good?")
    page.get_by_role("button", name=f"Keep memory {ids[23]}").click()
    expect(page.get_by_role("button", name=f"Delete memory {ids[23]}")).to_be_focused()
    expect(page.get_by_role("button", name=f"Confirm deleting memory {ids[23]}")).to_have_count(0)
    kept = api(gateway, "GET", f"/v1/memory/memories/{ids[23]}", params={"namespace": name})
    assert kept.status_code == 200
    page.get_by_role("button", name=f"Delete memory {ids[23]}").click()
    page.keyboard.press("Escape")  # so does Escape
    expect(page.get_by_role("button", name=f"Delete memory {ids[23]}")).to_be_visible()
    assert api(gateway, "GET", "/v1/memory/namespaces/" + name).json()["count"] == 25
    expect(page.locator("#ns-total")).to_have_text("25 memories")

    page.get_by_role("button", name=f"Delete memory {ids[23]}").click()
    page.get_by_role("button", name=f"Confirm deleting memory {ids[23]}").click()
    expect(page.get_by_role("status")).to_have_text(f"Deleted memory {ids[23]}.")
    expect(page.locator("#ns-total")).to_have_text("24 memories")
    expect(page.locator(f'tr[data-id="{ids[23]}"]')).to_have_count(0)
    expect(cello).to_have_count(0)  # gone from the hits too
    expect(rows).to_have_count(20)  # the page refilled from the next one
    gone = api(gateway, "GET", f"/v1/memory/memories/{ids[23]}", params={"namespace": name})
    assert gone.status_code == 404

    page.get_by_role("button", name="Erase namespace…").click()
    dialog = page.get_by_role("dialog", name="Erase namespace?")
    expect(dialog).to_be_visible()
    go = dialog.get_by_role("button", name="Erase for good")
    expect(go).to_be_disabled()
    dialog.get_by_label("Namespace name").fill(name[:-1])
    expect(go).to_be_disabled()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert (
        len(api(gateway, "GET", "/v1/memory/memories", params={"namespace": name}).json()["data"])
        == 20
    )

    page.get_by_role("button", name="Erase namespace…").click()
    dialog.get_by_label("Namespace name").fill(name)
    go.click()
    expect(page.get_by_role("status")).to_have_text(
        f"Erased namespace {name}: 24 memories deleted."
    )
    expect(rows).to_have_count(0)
    expect(page.get_by_text("No memories in this namespace.")).to_be_visible()
    expect(page.locator("#ns-total")).to_have_text("0 memories")
    listed = api(gateway, "GET", "/v1/memory/memories", params={"namespace": name}).json()
    assert listed["data"] == []

    # an empty namespace: the chat would inject nothing
    page.get_by_label("Question to preview").fill("Which boat do I keep?")
    page.get_by_role("button", name="Preview", exact=True).click()
    expect(page.locator("#preview-summary")).to_have_text(
        "Nothing would be injected for “Which boat do I keep?”: the request would go upstream "
        "as it is."
    )
    expect(page.locator("#preview-figure")).to_be_hidden()
    expect(page.locator("#preview-memories li")).to_have_count(0)

    # back to the landing page
    page.get_by_role("button", name="← All namespaces").click()
    expect(page.locator("#workspace")).to_be_hidden()
    expect(page.locator("#landing")).to_be_visible()
    assert "namespace=" not in page.url

    assert errors == []
    assert urls
    assert all(u.startswith(gateway.url + "/") for u in urls), urls  # nothing from elsewhere


def test_inspector_forgets_a_conversation(gateway: GatewayProcess, page: Page) -> None:
    name = "ui-" + uuid.uuid4().hex[:8]
    memories = [
        {"content": f"Trip plan {i}: Lisbon in May", "metadata": {"conversation_id": "trip"},
         "created_at": f"2024-04-0{i + 1}T10:00:00Z"}
        for i in range(3)
    ] + [
        {"content": "Standup notes", "metadata": {"conversation_id": "work"},
         "created_at": "2024-04-05T10:00:00Z"},
        {"content": "Allergic to peanuts", "created_at": "2024-04-06T10:00:00Z"},
    ]  # fmt: skip
    for namespace in (name, name + "-other"):
        added = api(gateway, "POST", "/v1/memory/memories", params={"namespace": namespace},
                    json={"memories": memories})  # fmt: skip
        assert added.status_code == 200, added.text
    ids = added.json()["ids"]
    urls, errors = watch(page, gateway.url)
    page.goto(f"{gateway.url}/ui?namespace={name}")
    rows = page.locator("#memories tbody tr")
    expect(rows).to_have_count(5)
    # only a memory of a conversation offers to forget it
    expect(page.get_by_role("button", name="Forget conversation trip")).to_have_count(3)
    expect(page.get_by_role("button", name="Forget conversation work")).to_have_count(1)
    expect(page.locator("#memories tbody tr", has_text="peanuts").locator("button")).to_have_count(
        1
    )
    page.get_by_label("Search text").fill("Lisbon trip in May")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator('#hits li[data-conversation="trip"]')).to_have_count(3)

    forget = page.get_by_role("button", name="Forget conversation trip").first
    forget.click()
    expect(page.get_by_text("Forget the whole conversation?")).to_be_visible()
    page.get_by_role("button", name="Keep conversation trip").click()
    expect(page.get_by_role("button", name="Forget conversation trip")).to_have_count(3)
    assert api(gateway, "GET", "/v1/memory/namespaces/" + name).json()["count"] == 5

    page.get_by_role("button", name="Forget conversation trip").first.click()
    page.get_by_role("button", name="Confirm forgetting conversation trip").click()
    expect(page.get_by_role("status")).to_have_text("Forgot conversation trip: 3 memories deleted.")
    expect(rows).to_have_count(2)
    expect(page.locator("#ns-total")).to_have_text("2 memories")
    expect(page.locator('#hits li[data-conversation="trip"]')).to_have_count(0)
    left = api(gateway, "GET", "/v1/memory/memories", params={"namespace": name}).json()["data"]
    assert sorted(m["content"] for m in left) == ["Allergic to peanuts", "Standup notes"]
    other = api(gateway, "GET", "/v1/memory/namespaces/" + name + "-other").json()
    assert other["count"] == 5  # another namespace's conversation of the same id stays
    assert ids
    assert errors == []
    assert all(u.startswith(gateway.url + "/") for u in urls), urls


def test_inspector_sends_the_key_and_explains_refusals(
    keyed_gateway: GatewayProcess, page: Page
) -> None:
    name = "team-ui-" + uuid.uuid4().hex[:6]
    added = api(keyed_gateway, "POST", "/v1/memory/memories", params={"namespace": name},
                headers={"authorization": f"Bearer {TEAM_KEY}"},
                json={"memories": [{"content": "Prefers window seats"}]})  # fmt: skip
    assert added.status_code == 200, added.text

    page.goto(f"{keyed_gateway.url}/ui?namespace={name}")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("The gateway refused the API key (401): missing API key")
    expect(page.locator("#workspace")).to_be_hidden()
    note = page.locator("#ns-note")
    expect(note).to_contain_text("No namespaces to show: The gateway refused the API key (401)")

    # a key that may not list namespaces gets a note instead of the list
    page.get_by_label("API key").fill(TEAM_KEY)
    page.get_by_role("button", name="Refresh the namespaces").click()
    expect(note).to_have_text(
        "Listing namespaces needs an admin key. Type the namespace your key may use above and "
        "open it."
    )
    expect(page.locator(".ns-card")).to_have_count(0)
    expect(page.get_by_role("button", name="Show more namespaces")).to_be_hidden()

    page.get_by_role("button", name="Open namespace").click()
    expect(page.locator("#memories tbody tr")).to_have_count(1)
    expect(page.locator("#ns-total")).to_have_text("1 memory")  # counted for this key too
    expect(alert).to_be_hidden()

    # the preview works for the key of the namespace
    page.get_by_label("Question to preview").fill("Which seat should I book?")
    page.get_by_role("button", name="Preview", exact=True).click()
    expect(page.locator("#preview-message")).to_contain_text('"text": "Prefers window seats"')
    assert page.evaluate("sessionStorage.getItem('memgate.apiKey')") == TEAM_KEY

    page.reload()  # the key stays for the tab
    expect(page.get_by_label("API key")).to_have_value(TEAM_KEY)
    expect(page.locator("#memories tbody tr")).to_have_count(1)

    page.get_by_role("button", name="Erase namespace…").click()
    page.get_by_label("Namespace name").fill(name)
    page.get_by_role("button", name="Erase for good").click()
    expect(alert).to_have_text(
        "This key is not allowed to do that (403): this operation needs an admin key"
    )
    assert len(api(keyed_gateway, "GET", "/v1/memory/memories", params={"namespace": name},
                   headers={"x-memgate-key": TEAM_KEY}).json()["data"]) == 1  # fmt: skip


# The screenshots' data: the same every run, on a gateway of its own (so no other test's
# namespaces show), created oldest first.
PEOPLE = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
    "xavier", "yolanda", "zoe", "team-travel",
]  # fmt: skip
ALICE = [
    ("2024-03-02T09:15:00Z", "user", "I'm planning a trip to Japan in October, mostly Kyoto."),
    ("2024-03-02T09:15:01Z", "assistant", "Kyoto in October: the leaves turn late."),
    ("2024-03-05T18:40:00Z", "fact", "Alice is vegetarian and avoids fish sauce."),
    ("2024-03-08T07:05:00Z", "user", "Book me a window seat whenever I fly."),
    ("2024-03-08T07:05:01Z", "assistant", "Noted: window seats on every flight."),
    ("2024-03-12T12:30:00Z", "fact", "Alice's sister Maya lives in Osaka."),
    ("2024-03-15T20:10:00Z", "user", "My budget for the Japan trip is about 3,000 euros."),
    ("2024-03-15T20:10:01Z", "assistant", "That covers a rail pass and ryokans."),
    ("2024-03-21T08:00:00Z", "fact", "Alice runs 10 km every Saturday morning."),
    ("2024-03-28T16:45:00Z", "user", "I prefer small family-run hotels to big chains."),
]  # fmt: skip
QUESTION = "Help me plan my trip to Japan"


@pytest.fixture(scope="module")
def demo_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeUpstream, str]
) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("e2e-ui-demo") / "data", upstream[1])
    try:
        for i, person in enumerate(PEOPLE):
            if person == "alice":
                memories = [{"created_at": t, "role": r, "content": c} for t, r, c in ALICE]
            else:
                memories = [
                    {"created_at": f"2024-04-{j + 1:02d}T10:00:00Z", "role": "fact",
                     "content": f"{person.title()} note {j + 1}"}
                    for j in range(i % 7 + 1)
                ]  # fmt: skip
            r = api(gw, "POST", "/v1/memory/memories", params={"namespace": person},
                    json={"memories": memories})  # fmt: skip
            assert r.status_code == 200, r.text
        yield gw
    finally:
        assert gw.stop() == 0, gw.log()


def test_landing_filters_preview_and_the_readme_screenshots(
    demo_gateway: GatewayProcess, upstream: tuple[FakeUpstream, str], page: Page
) -> None:
    gw = demo_gateway
    urls, errors = watch(page, gw.url)
    DOCS.mkdir(exist_ok=True)

    # Landing: the namespaces with their counts, a page of 20 at a time
    page.goto(gw.url + "/ui")
    cards = page.locator(".ns-card")
    expect(cards).to_have_count(20)
    listed = api(gw, "GET", "/v1/memory/namespaces", params={"limit": 20}).json()
    assert listed["has_more"] is True
    for card, info in zip(cards.all(), listed["data"], strict=True):
        expect(card).to_have_attribute("data-namespace", info["namespace"])
        n = info["count"]
        expect(card).to_have_text(f"{info['namespace']}{n} {'memory' if n == 1 else 'memories'}")
    more = page.get_by_role("button", name="Show more namespaces")
    expect(more).to_be_visible()
    expect(page.locator("#ns-shown")).to_have_text("20 shown, more to come.")
    page.screenshot(path=str(DOCS / "ui-namespaces.png"))
    more.click()
    expect(cards).to_have_count(len(PEOPLE))
    # every namespace once, in the store's order (``next_offset`` continues the first page)
    assert sorted(cards.evaluate_all("cards => cards.map(c => c.dataset.namespace)")) == sorted(
        PEOPLE
    )
    expect(page.locator('.ns-card[data-namespace="alice"]')).to_have_text("alice10 memories")
    expect(more).to_be_hidden()
    expect(page.locator("#ns-shown")).to_have_text(f"{len(PEOPLE)} shown.")
    # the namespaces are suggestions for the namespace field too
    assert page.locator("#namespaces option").count() == len(PEOPLE)

    # Open one with a click: its total
    page.get_by_role("button", name="alice 10 memories").click()
    expect(page.locator("#workspace")).to_be_visible()
    expect(page.locator("#ns-title")).to_have_text("Namespace alice")
    expect(page.locator("#ns-total")).to_have_text("10 memories")
    assert page.url.endswith("/ui?namespace=alice")
    rows = page.locator("#memories tbody tr")
    expect(rows).to_have_count(10)

    def shown() -> list[str]:
        return [c.strip() for c in rows.locator("td.content p").all_inner_texts()]

    def last_list_query() -> dict[str, list[str]]:
        listing = [u for u in urls if "/v1/memory/memories?" in u]
        return parse_qs(urlsplit(listing[-1]).query)

    newest_first = [c for _, _, c in reversed(ALICE)]
    # Role filter (applied by the gateway)
    page.get_by_label("Role", exact=True).fill("fact")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(rows).to_have_count(3)
    assert shown() == [c for t, r, c in reversed(ALICE) if r == "fact"]
    assert json.loads(last_list_query()["filter"][0]) == {"role": "fact"}
    expect(page.locator("#filter-summary")).to_have_text(
        "Showing only memories with role fact (UTC)."
    )
    # Dates, both days included; with two roles
    page.get_by_label("Role", exact=True).fill("user, assistant")
    page.get_by_label("From (UTC)").fill("2024-03-02")
    page.get_by_label("To (UTC)").fill("2024-03-08")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(rows).to_have_count(4)
    assert shown() == [c for t, r, c in reversed(ALICE)
                       if r != "fact" and "2024-03-02" <= t[:10] <= "2024-03-08"]  # fmt: skip
    query = last_list_query()
    assert json.loads(query["filter"][0]) == {"role": {"$in": ["user", "assistant"]}}
    assert query["created_after"] == ["2024-03-02T00:00:00Z"]
    assert query["created_before"] == ["2024-03-09T00:00:00Z"]
    # Dates alone
    page.get_by_label("Role", exact=True).fill("")
    page.get_by_label("From (UTC)").fill("2024-03-12")
    page.get_by_label("To (UTC)").fill("")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(rows).to_have_count(5)
    assert shown() == newest_first[:5]
    assert "created_before" not in last_list_query()
    page.get_by_label("From (UTC)").fill("")
    page.get_by_label("To (UTC)").fill("2024-03-04")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(rows).to_have_count(2)
    assert shown() == newest_first[-2:]
    page.get_by_label("From (UTC)").fill("2024-04-01")
    page.get_by_label("To (UTC)").fill("")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(page.get_by_text("No memories match these filters.")).to_be_visible()
    expect(page.locator("#ns-total")).to_have_text("10 memories")  # the namespace's total
    page.get_by_role("button", name="Clear", exact=True).click()
    expect(rows).to_have_count(10)
    assert shown() == newest_first
    expect(page.locator("#filter-summary")).to_have_text("")

    # The screenshot of an open namespace: a search, and filters applied
    page.get_by_label("Search text").fill("travel plans")
    page.get_by_label("k", exact=True).fill("3")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#hits li")).to_have_count(3)
    page.get_by_label("Role", exact=True).fill("user, fact")
    page.get_by_label("From (UTC)").fill("2024-03-05")
    page.get_by_label("To (UTC)").fill("2024-03-21")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(rows).to_have_count(5)
    page.screenshot(path=str(DOCS / "ui-namespace.png"))

    # Preview: exactly the system message a memory chat would add, and its memories
    page.get_by_label("Question to preview").fill(QUESTION)
    page.get_by_role("button", name="Preview", exact=True).click()
    message = page.locator("#preview-message")
    expect(message).to_be_visible()
    recall = api(gw, "POST", "/v1/memory/recall", params={"namespace": "alice"},
                 json={"query": QUESTION}).json()  # fmt: skip
    assert recall["message"] is not None
    assert recall["data"]
    expect(message).to_have_text(recall["message"]["content"])
    kept = page.locator("#preview-memories li")
    expect(kept).to_have_count(len(recall["data"]))
    for item, want in zip(kept.all(), recall["data"], strict=True):
        expect(item).to_have_attribute("data-id", want["id"])
        expect(item.locator(".content")).to_have_text(want["content"])
    n = len(recall["data"])
    expect(page.locator("#preview-summary")).to_have_text(
        f"One system message with {n} {'memory' if n == 1 else 'memories'} would be injected "
        f"for “{QUESTION}” (after the client's own system messages):"
    )
    assert "Japan" in message.inner_text()
    page.locator("#preview-panel").screenshot(path=str(DOCS / "ui-preview.png"))

    # ... which is what the upstream receives in a real memory chat asking the same
    fake, _ = upstream
    chat = api(gw, "POST", "/v1/memory/chat/completions", params={"namespace": "alice"},
               json={"model": "fake-model",
                     "messages": [{"role": "user", "content": QUESTION}]})  # fmt: skip
    assert chat.status_code == 200, chat.text
    assert chat.headers["x-memory-recalled"] == str(n)
    sent = next(r.body for r in reversed(fake.requests) if r.path.endswith("/chat/completions"))
    assert sent["messages"] == [recall["message"], {"role": "user", "content": QUESTION}]

    assert errors == []
    assert all(u.startswith(gw.url + "/") for u in urls), urls


def test_api_docs_render_offline(gateway: GatewayProcess, page: Page) -> None:
    """``/docs`` is Swagger UI from the package's own files: with every other origin
    refused, it renders the gateway's operations."""
    urls, errors = watch(page, gateway.url)
    page.route(
        "**/*",
        lambda route: (
            route.continue_() if route.request.url.startswith(gateway.url + "/") else route.abort()
        ),
    )
    page.goto(gateway.url + "/docs")
    operations = page.locator(".swagger-ui .opblock")
    expect(operations.first).to_be_visible()
    expect(page.locator(".swagger-ui")).to_contain_text("/v1/memory/chat/completions")
    assert all(u.startswith(gateway.url + "/") for u in urls), urls
    assert errors == []
