"""The memory inspector (``/ui``) in real headless Chromium (Debian's ``chromium``, driven by
Playwright with the system browser; nothing is downloaded). Leaves a screenshot in
``artifacts/ui-inspector.png``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import TEAM_KEY, GatewayProcess

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
    page.get_by_label("Namespace", exact=True).fill(name)
    page.get_by_role("button", name="Open namespace").click()
    rows = page.locator("#memories tbody tr")
    expect(rows).to_have_count(20)
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

    page.get_by_role("button", name=f"Delete memory {ids[23]}").click()
    expect(page.get_by_role("status")).to_have_text(f"Deleted memory {ids[23]}.")
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
    listed = api(gateway, "GET", "/v1/memory/memories", params={"namespace": name}).json()
    assert listed["data"] == []

    assert errors == []
    assert urls
    assert all(u.startswith(gateway.url + "/") for u in urls), urls  # nothing from elsewhere


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

    page.get_by_label("API key").fill(TEAM_KEY)
    page.get_by_role("button", name="Open namespace").click()
    expect(page.locator("#memories tbody tr")).to_have_count(1)
    expect(alert).to_be_hidden()
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
