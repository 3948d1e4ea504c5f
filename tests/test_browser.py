"""The pages in a real browser: Debian's chromium driven by pytest-playwright against a live server.

A live stack (server process, celery with beat, agents on demand) per module; every test logs
in through the login page. Screenshots for docs/ come from the last test (MUSTER_SCREENSHOTS_DIR).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Page, expect

from tests import live
from tests.live import Stack, wait_for

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's chromium (playwright cannot download browsers here); root needs --no-sandbox."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: make setup installs Debian's chromium")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ["--no-sandbox"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1440, "height": 900}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A live stack whose logins are not throttled (every test logs in)."""
    # Small log caps, so that a run of a few seconds goes past them (test_a_followed_capped_log_…).
    with live.stack(
        tmp_path_factory.mktemp("web"), LOGIN_THROTTLE="1000/min", LOG_HEAD_BYTES="1024", LOG_TAIL_BYTES="4096"
    ) as stack:
        stack.manage(
            "shell", "-c",
            "from django.contrib.auth.models import User; User.objects.create_user('carol', password='pw-carol-123')",
        )  # fmt: skip
        yield stack
    live.drop_template()


@pytest.fixture(autouse=True)
def keeps_to_the_csp(page: Page) -> Iterator[None]:
    """Every test fails on anything the Content-Security-Policy refused (an inline script or style, eval)."""
    refused: list[str] = []
    page.on(
        "console",
        lambda m: refused.append(f"{m.text[:120]} at {m.location}") if "Content Security Policy" in m.text else None,
    )
    yield
    assert not refused, refused


def login(page: Page, ws: Stack, username: str = "admin", password: str | None = None) -> None:
    page.goto(ws.url + "/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password or ws.admin_password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    expect(page.locator(".topbar .who")).to_be_attached()  # logged in (on a phone it sits in the menu)


def toast(page: Page, text: str | re.Pattern[str]) -> None:
    expect(page.locator("#toasts .toast").filter(has_text=text).first).to_be_visible()


def row(page: Page, name: str) -> Any:
    return page.locator(f"#queue-table tr[data-name='{name}']")


def test_create_rename_pause_clear_and_delete_a_queue(page: Page, ws: Stack) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, ws)
    page.goto(ws.url + "/orchestration/queues/")
    page.click("#new-queue")
    page.fill("#new-queue-name", "default")
    page.click("#new-queue-form button[type=submit]")
    expect(page.locator("#new-queue-form .field-error")).to_have_text("a queue named 'default' already exists")
    page.fill("#new-queue-name", "web queue")
    page.click("#new-queue-form button[type=submit]")
    toast(page, "Queue web queue created")
    expect(row(page, "web queue")).to_be_visible()
    expect(page.locator("#new-queue-dialog")).not_to_be_visible()
    # Rename from the right-click menu.
    row(page, "web queue").locator("td").first.click(button="right")
    page.locator(".menu:not([hidden]) button", has_text="Rename").click()
    page.fill("#rename-queue-name", "web-renamed")
    page.click("#rename-queue-form button[type=submit]")
    toast(page, "Renamed to web-renamed")
    expect(row(page, "web-renamed")).to_be_visible()
    # Pause from the ⋮ menu.
    row(page, "web-renamed").locator("[data-menu-button]").click()
    page.locator(".menu:not([hidden]) button", has_text="Pause").click()
    expect(row(page, "web-renamed").locator(".chip.paused")).to_be_visible()
    # Clear, with a confirmation.
    for i in range(3):
        ws.enqueue("web-renamed", name=f"pending-{i}", command=["true"])
    expect(row(page, "web-renamed").locator("td.num").last).to_have_text("3", timeout=10_000)
    row(page, "web-renamed").locator("[data-menu-button]").click()
    page.locator(".menu:not([hidden]) button", has_text="Clear").click()
    expect(page.locator("#confirm-text")).to_contain_text("Remove all 3 pending experiments")
    page.click("#confirm-yes")
    toast(page, "Cleared: 3 experiments dequeued")
    expect(row(page, "web-renamed").locator("td.num").last).to_have_text("0")
    # Delete.
    row(page, "web-renamed").locator("[data-menu-button]").click()
    page.locator(".menu:not([hidden]) button", has_text="Delete").click()
    expect(page.locator("#confirm-text")).to_have_text("Delete the queue web-renamed? It has no pending experiments.")
    page.click("#confirm-yes")
    toast(page, "Queue deleted")
    expect(row(page, "web-renamed")).to_have_count(0)
    assert errors == []


def drag(page: Page, source: Any, target: Any) -> None:
    """A mouse drag in small steps, as a person does it (SortableJS follows mouse events)."""
    a, b = source.bounding_box(), target.bounding_box()
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(a["x"] + a["width"] / 2, a["y"] + (b["y"] - a["y"] - 4) * i / 20 + a["height"] / 2)
        page.wait_for_timeout(15)
    page.mouse.up()


def test_drag_to_reorder_is_kept_and_bulk_move_and_dequeue(page: Page, ws: Stack) -> None:
    q = ws.queue("drag-q")
    ids = [ws.enqueue("drag-q", name=f"job-{n}", command=["true"])["id"] for n in "abcd"]
    login(page, ws)
    page.goto(ws.url + f"/orchestration/queues/?queue={q['id']}")
    names = page.locator("#panel #entries tbody tr td:nth-child(4) a")
    expect(names).to_have_text(["job-a", "job-b", "job-c", "job-d"])
    drag(page, page.locator(f"#e-{ids[3]} .drag-handle"), page.locator(f"#e-{ids[0]} .drag-handle"))
    expect(names).to_have_text(["job-d", "job-a", "job-b", "job-c"])
    page.reload()
    expect(names).to_have_text(["job-d", "job-a", "job-b", "job-c"])
    # Select two and move them to another queue (a move never creates one: a typo is refused).
    ws.queue("overflow")
    page.check(f"#e-{ids[0]} input[data-select]")
    page.check(f"#e-{ids[1]} input[data-select]")
    expect(page.locator("[data-bulkbar] [data-count]")).to_have_text("2")
    page.locator("[data-bulkbar] button", has_text="Move to queue").click()
    page.fill("#move-target", "overflow")
    page.locator("#move-dialog button[type=submit]").click()
    toast(page, "Moved 2 to overflow")
    expect(names).to_have_text(["job-d", "job-c"])
    overflow = next(x for x in ws.admin.request("GET", "queues/") if x["name"] == "overflow")
    entries = ws.admin.request("GET", f"queues/{overflow['id']}/entries/")
    assert [e["name"] for e in entries["results"]] == ["job-a", "job-b"]
    # Dequeue one from its ⋮ menu.
    page.locator(f"#e-{ids[2]} [data-menu-button]").click()
    page.locator(".menu:not([hidden]) button", has_text="Dequeue").click()
    expect(page.locator("#confirm-text")).to_contain_text("Dequeue job-c?")  # one, as a bulk dequeue, asks first
    page.click("#confirm-yes")
    toast(page, "Dequeued 1")
    expect(names).to_have_text(["job-d"])
    assert ws.experiment(ids[2])["status"] == "created"


class Hook:
    """A loopback endpoint that records requests and answers CORS (the browser issues the action)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def _cors(self) -> None:
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Headers", "*")
                self.send_header("Access-Control-Allow-Methods", "GET, POST")

            def do_OPTIONS(self) -> None:
                self.send_response(204)
                self._cors()
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                hook.seen.append({"path": self.path, "body": body, "x_name": self.headers.get("X-Name")})
                self.send_response(200)
                self._cors()
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_custom_action_reaches_its_endpoint_with_the_object_substituted_and_escaped(
    page: Page, ws: Stack, tmp_path: Path
) -> None:
    hook = Hook()
    try:
        config = tmp_path / "actions.json"
        action = {"method": "POST", "url": hook.url + "/runs/${id}?name=${name}",
                  "payload": '{"id": "${id}", "name": "${name}"}', "headers": {"X-Name": "${name}"}}  # fmt: skip
        config.write_text(json.dumps({"experiment": [{"name": "Send to tracker", "confirm": True, "action": action}]}))
        assert "1 created" in ws.manage("sync_actions", str(config))
        exp = ws.admin.request("POST", "experiments/", {"name": 'x"&/<y', "command": ["true"]})["experiment"]
        login(page, ws)
        page.goto(ws.url + "/experiments/")
        page.locator(f"#x-{exp['id']} [data-menu-button]").click()
        page.locator(".menu:not([hidden]) button", has_text="Send to tracker").click()
        expect(page.locator("#confirm-text")).to_contain_text('Send to tracker: x"&/<y?')
        page.click("#confirm-yes")
        toast(page, "Send to tracker: done (200)")
        wait_for(lambda: hook.seen, what="the action to reach the endpoint")
        seen = hook.seen[0]
        assert seen["path"] == f"/runs/{exp['id']}?name=x%22%26%2F%3Cy"
        assert json.loads(seen["body"]) == {"id": exp["id"], "name": 'x"&/<y'}
        assert seen["x_name"] == 'x"&/<y'
    finally:
        hook.server.shutdown()


def test_a_worker_shows_its_resource_graph_and_the_span_redraws(page: Page, ws: Stack) -> None:
    ws.start_agent("web-agent", ["default"], "--cpu-only")
    wait_for(lambda: ws.admin.request("GET", "workers/web-agent/stats/", params={"span": "3h"})["points"],
             timeout=30, what="stored reports")  # fmt: skip
    wait_for(lambda: ws.admin.request("GET", "stats/fleet/", params={"span": "3h"})["points"],
             timeout=30, what="a fleet sample")  # fmt: skip
    login(page, ws)
    page.goto(ws.url + "/orchestration/workers/")
    graph = page.locator("#graph-workers")
    expect(page.locator(".graphbar h2").first).to_have_text("Workers Utilization")
    expect(graph.locator(".legendtext").first).to_have_text("Total Workers")
    ticks = graph.locator(".ytick text").all_text_contents()
    assert ticks and all(t.replace(",", "").isdigit() for t in ticks), ticks  # worker counts: no 0.2 ticks
    page.locator("#worker-table tr[data-name='web-agent'] td").first.click()
    expect(page.locator(".graphbar h2").first).to_have_text("web-agent")
    expect(page.locator("#panel h2")).to_have_text("web-agent")
    expect(graph).to_have_attribute("data-loaded", re.compile(r"worker=web-agent"))
    expect(graph.locator(".legendtext").first).to_have_text("CPU Usage")
    assert int(graph.get_attribute("data-points") or 0) > 0
    page.select_option("#metric-select", "memory")
    expect(graph.locator(".legendtext").first).to_have_text("Memory Used")
    page.select_option("select[data-span]", "1d")
    expect(graph).to_have_attribute("data-loaded", re.compile(r"span=1d"))
    assert "span=1d" in page.url and "worker=web-agent" in page.url
    page.locator("#panel .subtabs button", has_text="QUEUES").click()
    expect(page.locator("#panel [data-tab-body=queues] table")).to_contain_text("default")
    # The panel and its tab survive the live refresh.
    page.wait_for_timeout(5500)
    expect(page.locator("#panel [data-tab-body=queues]")).to_be_visible()
    expect(page.locator("#worker-table tr.selected")).to_have_count(1)


def test_the_experiment_page_tails_a_running_log(page: Page, ws: Stack) -> None:
    if not ws.worker("web-agent"):
        ws.start_agent("web-agent", ["default"], "--cpu-only")
    script = "import time\nfor i in range(60):\n    print(f'line {i}', flush=True)\n    time.sleep(0.25)\n"
    exp = ws.enqueue("default", name="tail me", script=script)
    ws.wait_status(exp["id"], "in_progress", timeout=30)
    login(page, ws)
    page.goto(ws.url + f"/experiments/{exp['id']}/")
    log = page.locator("#log")
    expect(log).to_contain_text("line 2", timeout=15_000)
    expect(log).to_contain_text("line 30", timeout=30_000)
    expect(page.locator("#exp-status-chip")).to_have_text("completed", timeout=30_000)
    text = log.inner_text()
    assert [f"line {i}" for i in range(60)] == [ln for ln in text.splitlines() if ln.startswith("line")]


def test_a_followed_capped_log_reads_as_the_stored_log(page: Page, ws: Stack, tmp_path: Path) -> None:
    """The page keeps up with a log past its caps (1 KiB head, 4 KiB tail here), showing lines
    that are dropped later, and ends showing exactly the stored log: one marker, nothing dropped.
    `muster logs -f`, a stream, prints them all and then says on stderr what the stored log dropped."""
    if not ws.worker("web-agent"):
        ws.start_agent("web-agent", ["default"], "--cpu-only")
    script = (
        "import time\nfor i in range(250):\n    print(f'row {i:05d} ' + 'x' * 20, flush=True)\n    time.sleep(0.06)\n"
    )
    login(page, ws)
    exp = ws.enqueue("default", name="flood", script=script)
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("MUSTER_")}
    cli_env |= {"MUSTER_SERVER": ws.url, "MUSTER_API_KEY": ws.admin_key, "MUSTER_CONFIG": str(tmp_path / "c.json")}
    cli = subprocess.Popen(
        [sys.executable, "-m", "muster_agent", "logs", exp["id"], "-f"],
        cwd=live.ROOT, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    page.goto(ws.url + f"/experiments/{exp['id']}/")
    log = page.locator("#log")
    # Shown live (it stays in the stored tail for some 8 s); the stored log drops it later.
    expect(log).to_contain_text("row 00080", timeout=30_000)
    expect(page.locator("#exp-status-chip")).to_have_text("completed", timeout=60_000)
    stored = ws.logs(exp["id"])
    assert "row 00080" not in stored and stored.count("dropped here") == 1 and "row 00249" in stored
    page.wait_for_function("s => document.querySelector('#log').textContent === s", arg=stored, timeout=15_000)
    expect(page.locator("#log .log-marker")).to_have_count(1)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert [ln for ln in out.splitlines() if ln.startswith("row")] == [f"row {i:05d} {'x' * 20}" for i in range(250)]
    assert "the stored log dropped" in err and f"muster logs {exp['id']}" in err


def test_dark_mode_is_remembered(page: Page, ws: Stack) -> None:
    login(page, ws)
    page.goto(ws.url + "/orchestration/queues/")
    before = page.evaluate("document.documentElement.dataset.theme")
    page.click("#theme-toggle")
    after = page.evaluate("document.documentElement.dataset.theme")
    assert {before, after} == {"light", "dark"}
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") == after
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(18, 21, 27)" if after == "dark" else "rgb(246, 247, 249)")


def test_a_user_sees_no_admin_actions_and_the_server_refuses_them(page: Page, ws: Stack) -> None:
    q = ws.queue("carols-view")
    login(page, ws, "carol", "pw-carol-123")
    page.goto(ws.url + "/orchestration/queues/")
    expect(row(page, "carols-view")).to_be_visible()
    expect(page.locator("#new-queue")).to_have_count(0)
    row(page, "carols-view").locator("td").first.click(button="right")
    expect(page.locator(".menu:not([hidden])")).to_be_visible()
    expect(page.locator(".menu:not([hidden]) button", has_text="Delete")).to_have_count(0)
    status = page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", headers: {"X-CSRFToken":
             document.querySelector("meta[name=csrf-token]").content}})).status""",
        f"/orchestration/queues/{q['id']}/delete/",
    )
    assert status == 403
    assert any(x["name"] == "carols-view" for x in ws.admin.request("GET", "queues/"))
    # In a queue's panel she may reorder, select, move and dequeue her own experiments only.
    theirs = ws.enqueue("carols-view", name="admins-run", command=["true"])
    page.goto(ws.url + "/experiments/new/")
    page.fill("input[name=name]", "carols-run")
    page.fill("input[name=command]", "python train.py")
    page.fill("input[name=queue]", "carols-view")
    page.locator("main button[type=submit]", has_text="Create").click()
    page.wait_for_url(re.compile(r"/experiments/[0-9a-f]{32}/$"))
    mine = page.url.rstrip("/").rsplit("/", 1)[-1]
    page.goto(ws.url + f"/orchestration/queues/?queue={q['id']}")
    expect(page.locator(f"#e-{mine} .drag-handle")).to_have_count(1)
    expect(page.locator(f"#e-{mine} input[data-select]")).to_have_count(1)
    expect(page.locator(f"#e-{theirs['id']} .drag-handle")).to_have_count(0)
    expect(page.locator(f"#e-{theirs['id']} input[data-select]")).to_have_count(0)
    # Its ⋮ (there when custom actions exist) offers those actions only.
    if page.locator(f"#e-{theirs['id']} [data-menu-button]").count():
        page.locator(f"#e-{theirs['id']} [data-menu-button]").click()
        expect(page.locator(".menu:not([hidden])")).to_be_visible()
        expect(page.locator(".menu:not([hidden]) button", has_text=re.compile("Move|Dequeue"))).to_have_count(0)
        page.keyboard.press("Escape")
    page.locator(f"#e-{mine} [data-menu-button]").click()
    expect(page.locator(".menu:not([hidden]) button", has_text="Move to top")).to_be_visible()
    page.keyboard.press("Escape")
    page.goto(ws.url + f"/experiments/{theirs['id']}/")
    expect(page.locator("#exp-status button", has_text="Stop")).to_have_count(0)
    expect(page.locator("#exp-status button", has_text="Clone")).to_have_count(1)


def _agent_with_reports(ws: Stack) -> None:
    if not ws.worker("web-agent"):
        ws.start_agent("web-agent", ["default"], "--cpu-only")
    wait_for(lambda: ws.admin.request("GET", "workers/web-agent/stats/", params={"span": "3h"})["points"],
             timeout=30, what="stored reports")  # fmt: skip


def test_graphs_show_a_tooltip_on_hover_and_times_in_the_browsers_zone(browser: Browser, ws: Stack) -> None:
    """Hover a graph and read the tooltip; times on axes, tooltips and tables are New York's, named
    so, until the user picks UTC in Settings."""
    _agent_with_reports(ws)
    ctx = browser.new_context(timezone_id="America/New_York", viewport={"width": 1440, "height": 900})
    page = ctx.new_page()
    login(page, ws)
    page.goto(ws.url + "/orchestration/workers/?worker=web-agent")
    graph = page.locator("#graph-workers")
    expect(graph.locator(".legendtext").first).to_have_text("CPU Usage")
    expect(graph.locator(".xtitle")).to_have_text("America/New_York")
    box = graph.locator(".nsewdrag").bounding_box()
    assert box is not None and box["width"] > 300  # the hover layer spans the plot (not an 18 px strip)
    page.mouse.move(box["x"] + box["width"] - 4, box["y"] + box["height"] / 2)
    hover = graph.locator(".hoverlayer")
    expect(hover).to_contain_text("CPU Usage")
    shown = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (E[SD]T)", (hover.text_content() or ""))
    assert shown, hover.text_content() or ""
    at = datetime.strptime(shown.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo("America/New_York"))
    assert abs((datetime.now(UTC) - at).total_seconds()) < 600, shown.group(0)  # New York's clock, not UTC's
    expect(page.locator("#panel time[data-when]").first).to_have_attribute(
        "title", re.compile(r" E[SD]T \(America/New_York\)$")
    )
    # The user's setting: UTC.
    page.goto(ws.url + "/settings/")
    expect(page.locator("#zone-setting option[value=local]")).to_have_text(
        "this browser's time zone (America/New_York)"
    )
    page.select_option("#zone-setting", "UTC")
    page.goto(ws.url + "/orchestration/workers/?worker=web-agent")
    expect(graph.locator(".xtitle")).to_have_text("UTC")
    expect(page.locator("#panel time[data-when]").first).to_have_attribute("title", re.compile(r" UTC$"))
    ctx.close()


PHONE_PAGES = {
    "workers": "/orchestration/workers/",
    "worker": "/orchestration/workers/?worker=web-agent",
    "queues": "/orchestration/queues/",
    "experiments": "/experiments/",
    "new-experiment": "/experiments/new/",
    "settings": "/settings/",
}


def test_phones_get_a_menu_scrolling_tables_bottom_sheets_and_no_sideways_scroll(
    browser: Browser, ws: Stack, tmp_path: Path
) -> None:
    _agent_with_reports(ws)
    q = ws.queue("phone-q")
    exp = ws.enqueue("phone-q", name="a rather long experiment name " * 4, command=["true"])
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    login(page, ws)
    shots = tmp_path / "phone"
    shots.mkdir()
    pages = {
        **PHONE_PAGES,
        "queue": f"/orchestration/queues/?queue={q['id']}",
        "experiment": f"/experiments/{exp['id']}/",
    }
    for name, path in pages.items():
        page.goto(ws.url + path)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide at 390"
    # The last page was the queued experiment's: its log says why it is empty.
    expect(page.locator("#log")).to_have_attribute("data-empty", "Not started yet: no output.")
    # The top bar is a menu.
    expect(page.locator(".nav")).to_be_hidden()
    page.click("#nav-toggle")
    expect(page.locator(".nav a", has_text="Experiments")).to_be_visible()
    # A panel is a bottom sheet; a table that scrolls shows its shadow hint.
    page.goto(ws.url + f"/orchestration/queues/?queue={q['id']}")
    assert page.eval_on_selector("#panel", "el => getComputedStyle(el).position") == "fixed"
    page.goto(ws.url + "/orchestration/workers/")
    wrap = page.locator(".tablewrap").first
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")  # it scrolls sideways …
    assert "radial-gradient" in wrap.evaluate("el => getComputedStyle(el).backgroundImage")  # … and shows it
    ctx.close()
    target = os.environ.get("MUSTER_SCREENSHOTS_DIR")
    if target:
        for shot in shots.iterdir():
            shutil.copy(shot, Path(target) / shot.name)


AXE = "/static/vendor/axe-core-4.11.4.min.js"


def test_keyboard_reaches_rows_and_panels_and_axe_finds_nothing_serious(page: Page, ws: Stack) -> None:
    _agent_with_reports(ws)
    q = ws.queue("keys-q")
    exp = ws.enqueue("keys-q", name="keyboard", command=["true"])
    login(page, ws)
    page.goto(ws.url + "/orchestration/queues/")
    # Tab from the top of the page to the queue's row, then Enter opens its panel.
    target = f"q-{q['id']}"
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == target:
            break
    else:
        pytest.fail("the queue row is not reachable with Tab")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # a visible focus
    page.keyboard.press("Enter")
    expect(page.locator("#panel h2")).to_have_text("keys-q")
    page.keyboard.press("Shift+F10")
    expect(page.locator(".menu:not([hidden]) button").first).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator(".menu:not([hidden])")).to_have_count(0)
    problems = {}
    local = next(a for a in ws.admin.request("GET", "autoscalers/") if a["name"] == "local")
    paths = (*PHONE_PAGES.values(), f"/orchestration/queues/?queue={q['id']}", f"/experiments/{exp['id']}/",
             "/orchestration/autoscalers/", f"/orchestration/autoscalers/{local['id']}/",
             "/orchestration/autoscalers/new/", "/orchestration/autoscalers/new/json/")  # fmt: skip
    for theme, path in [(theme, path) for theme in ("light", "dark") for path in paths]:
        page.evaluate(f"localStorage.setItem('muster-theme', '{theme}')")
        page.goto(ws.url + path)
        page.wait_for_load_state("networkidle")
        page.add_script_tag(url=ws.url + AXE)
        found = page.evaluate(
            """async () => (await axe.run(document, {runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}))
                 .violations.filter((v) => ["serious", "critical"].includes(v.impact))
                 .map((v) => `${v.id}: ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`)"""
        )
        if found:
            problems[f"{path} ({theme})"] = found
    assert problems == {}, json.dumps(problems, indent=1)


def test_an_admin_creates_launches_and_stops_an_autoscaler_in_the_browser(page: Page, ws: Stack) -> None:
    """The AUTOSCALERS tab: the form (a field for every setting, grouped) shows every error beside
    its field, creates the app, whose dashboard then launches and stops it."""
    ws.queue("browser-auto")
    login(page, ws)
    page.goto(ws.url + "/orchestration/workers/")
    page.locator(".tabs a", has_text="AUTOSCALERS").click()
    expect(page.locator(".appcard h2", has_text="local")).to_be_visible()
    page.click("#new-autoscaler")
    expect(page.locator("[data-provider-section=aws]").first).to_be_visible()
    page.select_option("#f-provider", "local")
    expect(page.locator("[data-provider-section=aws]").first).to_be_hidden()
    page.fill("#f-name", "browser-fleet")
    page.fill("#f-workers_prefix", "Browser Fleet")
    page.fill("#f-max_idle_s", "1")
    page.fill("input[name='resources.0.name']", "box")
    page.fill("input[name='resources.0.instance_type']", "local")
    page.fill("input[name='resources.0.max_instances']", "1")
    page.click("[data-add-row=resource]")  # a fourth row, from the template
    expect(page.locator("input[name='resources.3.name']")).to_be_focused()
    page.fill("input[name='queues.0.queue']", "browser-auto")
    page.fill("input[name='queues.0.resources']", "box")
    page.locator("#autoscaler-fields button[type=submit]").click()
    expect(page.locator("#form-errors li")).to_have_count(2)
    expect(page.locator("#f-workers_prefix + .field-error, #f-workers_prefix ~ .field-error")).to_contain_text("prefix")
    expect(page.locator("#f-max_idle_s ~ .field-error")).to_be_visible()
    page.fill("#f-workers_prefix", "browser")
    page.fill("#f-max_idle_s", "60")
    page.locator("#autoscaler-fields button[type=submit]").click()
    expect(page.locator(".pagehead h1").last).to_have_text("browser-fleet")
    expect(page.locator("#app-state")).to_have_text("stopped")
    expect(page.locator("#resources")).to_contain_text("box")
    expect(page.locator("#app-queues")).to_contain_text("browser-auto")
    page.locator(".pagehead button", has_text="Launch").click()
    expect(page.locator("#app-state")).to_have_text("running")
    page.locator(".pagehead button", has_text="Stop").click()
    page.click("#confirm-yes")
    expect(page.locator("#app-state")).to_have_text("stopped")
    expect(page.locator("#app-console")).to_contain_text("set the app stopped")


def test_screenshots(page: Page, ws: Stack, tmp_path: Path) -> None:
    """Both tabs, a worker panel, a queue panel and an experiment page, light and dark."""
    if not ws.worker("web-agent"):
        ws.start_agent("web-agent", ["default"], "--cpu-only")
    q = ws.queue("a100 x8")
    for i in range(6):
        ws.enqueue("a100 x8", name=f"sweep lr={0.1 / (i + 1):.3f}", command=["python", "train.py"], gpus=1)
    script = "import time\nfor i in range(400):\n    print(f'epoch {i // 40} step {i} loss {1 / (i + 1):.4f}', flush=True)\n    print(f'MUSTER_ITERATION={i}', flush=True)\n    time.sleep(0.2)\n"
    running = ws.enqueue("default", name="resnet50 baseline", script=script)
    ws.wait_status(running["id"], "in_progress", timeout=30)
    page.wait_for_timeout(4000)
    out = tmp_path / "shots"
    out.mkdir()
    login(page, ws)
    shots = {
        "workers": "/orchestration/workers/",
        "worker-panel": "/orchestration/workers/?worker=web-agent",
        "queues": "/orchestration/queues/",
        "queue-panel": f"/orchestration/queues/?queue={q['id']}",
        "experiment": f"/experiments/{running['id']}/",
    }
    for theme in ("light", "dark"):
        page.evaluate(f"localStorage.setItem('muster-theme', '{theme}')")
        for name, url in shots.items():
            page.goto(ws.url + url)
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(1200)
            page.screenshot(path=str(out / f"{name}-{theme}.png"))
    taken = sorted(p.name for p in out.iterdir())
    assert len(taken) == 10 and all((out / n).stat().st_size > 20_000 for n in taken)
    target = os.environ.get("MUSTER_SCREENSHOTS_DIR")
    if target:
        for n in taken:
            shutil.copy(out / n, Path(target) / n)


def test_every_page_keeps_to_the_content_security_policy(page: Page, ws: Stack) -> None:
    """The policy is strict (scripts and styles from our static files only): each page works under it."""
    login(page, ws)
    exp = ws.enqueue("default", name="csp", command=["true"])
    for path in ("/orchestration/workers/", "/orchestration/queues/", "/experiments/", "/experiments/new/",
                 f"/experiments/{exp['id']}/", "/settings/", "/admin/", "/admin/queues/queue/", "/api/docs/",
                 "/orchestration/autoscalers/", "/orchestration/autoscalers/new/"):  # fmt: skip
        response = page.goto(ws.url + path)
        assert response is not None and response.ok, path
        assert "default-src 'self'" in (response.headers.get("content-security-policy") or ""), path
    page.goto(ws.url + "/api/docs/")
    expect(page.locator(".swagger-ui .info")).to_be_visible()  # its set-up script ran (a file, not inline)
    page.goto(ws.url + "/orchestration/workers/")
    graph = page.locator(".graph .main-svg").first
    expect(graph).to_be_visible()
