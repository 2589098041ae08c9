"""The README's "Run it on a work pool" steps against a real ``prefect server start`` and a real process
worker; then what a user sees of the runs in the server's UI, in headless Chromium.

One module-scoped stack (see ``conftest.py``) serves every test here: server up, ``prefect work-pool
create``, ``make blocks``, ``prefect deploy --all`` and ``prefect deployment ls`` (both rc 0), worker up,
``prefect deployment run`` of retrain-local twice (promoted, then unchanged), and one run that the server's
scheduler created for a test-only interval deployment. Screenshots land in ``tests/e2e/output/``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from nluflow.store import ModelStore
from nluflow.store.audit_log import AuditLog

from .conftest import (
    DEPLOYMENTS,
    FLOW_NAME,
    OUTPUT,
    POOL,
    PROJECT,
    SCHEDULE_DEPLOYMENT,
    SERVER_LOG_ERRORS,
    Browser,
    FlowRunDone,
    Page,
    Reporter,
    data_uri_png,
    png_size,
)

pytestmark = pytest.mark.slow

REPORT_KEY = f"{PROJECT}-retrain-report"
CONFUSION_KEY = f"{PROJECT}-confusion-matrix"
UIS = ("v1", "v2")
MIN_IMAGE_PX = 100  # a broken-image icon is 16-24 px; a real figure is hundreds


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artifacts(work_pool_run: FlowRunDone) -> dict[str, dict[str, Any]]:
    """The run's artifacts by key (the newest of each key), read through the REST API."""
    with httpx.Client(base_url=work_pool_run.api_url, timeout=30.0, trust_env=False) as client:
        response = client.post(
            "/artifacts/filter",
            # Filter on the artifact's own flow_run_id: a flow_runs/task_runs filter joins task runs and
            # would hide the report, which belongs to the flow run itself.
            json={
                "artifacts": {"flow_run_id": {"any_": [work_pool_run.flow_run_id]}},
                "sort": "CREATED_DESC",
            },
        )
    response.raise_for_status()
    by_key: dict[str, dict[str, Any]] = {}
    for artifact in response.json():
        by_key.setdefault(str(artifact["key"]), artifact)
    return by_key


@pytest.fixture(scope="module")
def ui_bases(work_pool_run: FlowRunDone) -> dict[str, str]:
    """Where each UI lives on this server (``/`` and ``/v2`` in prefect 3.9), from its /ui-settings."""
    response = httpx.get(f"{work_pool_run.ui_url}/ui-settings", timeout=30.0, trust_env=False)
    response.raise_for_status()
    settings = response.json()
    assert settings["api_url"] == work_pool_run.api_url, (
        f"the UI would call {settings['api_url']}, not this server's {work_pool_run.api_url}"
    )
    bases = {ui: str(settings[f"{ui}_base_url"] or "").rstrip("/") for ui in UIS}
    for ui in UIS:
        if ui not in settings["available_uis"]:
            bases.pop(ui)
    return bases


# --------------------------------------------------------------------------------------------- helpers


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def report_phrases(markdown: str) -> list[str]:
    """What a reader must find on the rendered report: every heading, the decision line, the gates table."""
    phrases: list[str] = []
    section = ""
    for raw in markdown.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            phrases.append(line.lstrip("#").strip())
        elif line.startswith("**") and line.endswith("**"):
            phrases.append(line.strip("*"))
        elif section == "Gates" and line.startswith("|") and not set(line) <= set("|-: "):
            phrases.extend(cell.strip() for cell in line.strip("|").split("|") if cell.strip())
    return [normalise(p.replace("`", "").replace("**", "")) for p in phrases]


def figures_in(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", markdown)


# Returns null until `marker` is on the page and at least `count` PNG data-URI images have loaded (or
# failed); then the page text and, per image, whether it decodes, its natural size and its size on screen.
IMAGES_JS = """
(async () => {
  const marker = %(marker)s, count = %(count)d, want = %(want)s;
  const text = document.body ? document.body.innerText : "";
  const imgs = Array.from(document.images).filter(i => i.src.startsWith("data:image/png"));
  if (!text.includes(marker) || imgs.length < count) return null;
  if (imgs.some(i => !i.complete)) return null;
  const out = [];
  for (const i of imgs) {
    let decoded = true;
    try { await i.decode(); } catch (e) { decoded = false; }
    const r = i.getBoundingClientRect();
    out.push({matches: want !== null && i.src === want, decoded, complete: i.complete, alt: i.alt,
              naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
              x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height});
  }
  return {text, images: out};
})()
"""

PAGE_HEIGHT_JS = """
Math.min(12000, Math.max(document.documentElement.scrollHeight,
  ...Array.from(document.querySelectorAll("body *")).map(e => e.scrollHeight)))
"""


def wait_for_images(page: Page, what: str, marker: str, count: int, want: str | None) -> dict[str, Any]:
    script = IMAGES_JS % {"marker": json.dumps(marker), "count": count, "want": json.dumps(want)}
    found: dict[str, Any] = page.wait_for(what, script)
    return found


def full_page_screenshot(page: Page, path: Path, width: int = 1400) -> Path:
    """Grow the viewport to the content (the UI scrolls an inner panel, not the document), then capture."""
    height = int(page.evaluate(PAGE_HEIGHT_JS))
    page.resize(width, max(height, 900))
    time.sleep(0.5)  # let the layout settle at the new size
    return page.screenshot(path)


def assert_not_blank(path: Path) -> tuple[int, int]:
    """The screenshot of a figure has real content: many colours, and not all background."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    height, width = pixels.shape[:2]
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    background = pixels.reshape(-1, 3)[0]
    share_other = float(np.mean(np.any(pixels != background, axis=2)))
    assert colours > 50 and share_other > 0.05, (
        f"{path}: the rendered figure looks blank ({colours} colours, {share_other:.1%} non-background)"
    )
    return width, height


# --------------------------------------------------------------------------------------------- the run


def test_deployment_run_completes_on_the_work_pool(work_pool_run: FlowRunDone, progress: Reporter) -> None:
    with httpx.Client(base_url=work_pool_run.api_url, timeout=30.0, trust_env=False) as client:
        run = client.get(f"/flow_runs/{work_pool_run.flow_run_id}").json()
        deployment = client.get(f"/deployments/{work_pool_run.deployment_id}").json()
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["deployment_id"] == work_pool_run.deployment_id
    # Executed by the worker on the pool (a process it started), with prefect.yaml's parameters.
    assert run["work_pool_name"] == POOL
    assert run["infrastructure_pid"], "no infrastructure pid: the worker did not start this run"
    assert run["parameters"]["params"]["project"] == PROJECT
    assert run["parameters"] == deployment["parameters"]
    progress(
        f"run {run['name']!r} on pool {run['work_pool_name']!r} queue {run['work_queue_name']!r}: "
        f"{run['state_name']} (timings: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in work_pool_run.timings.items())
        + ")"
    )


def test_model_promoted_in_store(work_pool_run: FlowRunDone, progress: Reporter) -> None:
    root = work_pool_run.nluflow_home / "store"
    pointer_file = root / PROJECT / "active.json"
    assert pointer_file.is_file(), f"no active pointer at {pointer_file}: nothing was promoted"
    store = ModelStore.local(root)
    pointer = store.active(PROJECT)
    assert pointer is not None
    assert pointer.run_id == work_pool_run.flow_run_id, "the active model was not promoted by this run"
    manifest = store.verify(PROJECT, pointer.model_id)  # re-hashes every model file
    assert manifest.sha256() == pointer.manifest_sha256
    assert manifest.files, "the stored model has no files"

    audit = AuditLog(root / PROJECT / "audit.jsonl")
    verification = audit.verify()
    assert verification.ok, verification.reason
    lines = {r["flow_run_id"]: r for r in (json.loads(x) for x in audit.path.read_text("utf-8").splitlines())}
    last = lines[work_pool_run.flow_run_id]
    assert last["decision"] == "promote"
    # Its promotion is two lines: the intent written before the pointer switch, completed by this one.
    intents = [r for r in audit.records() if r["decision"] == "promote-intent"]
    assert [(r["run_id"], r["seq"]) for r in intents] == [(work_pool_run.flow_run_id, last["intent_seq"])]
    assert last["promoted"] is True and last["model_id"] == pointer.model_id
    assert last["manifest_sha256"] == pointer.manifest_sha256
    # The rerun and the scheduled run trained nothing new: same model id, audited as unchanged.
    for run_id in (work_pool_run.rerun_id, work_pool_run.scheduled_run_id):
        assert lines[run_id]["decision"] == "unchanged" and lines[run_id]["promoted"] is False, lines[run_id]
        assert lines[run_id]["model_id"] == pointer.model_id
    assert [m.model_id for m in store.list_models(PROJECT)] == [pointer.model_id]
    progress(
        f"model promoted in the store: {PROJECT} active = {pointer.model_id} "
        f"({len(manifest.files)} files, sha256 verified; manifest {pointer.manifest_sha256[:12]}; "
        f"audit line {last['seq']} verified) - {pointer.reason}; rerun and scheduled run audited unchanged"
    )


def test_artifacts_through_api(work_pool_run: FlowRunDone, artifacts: dict[str, dict[str, Any]]) -> None:
    store = ModelStore.local(work_pool_run.nluflow_home / "store")
    pointer = store.active(PROJECT)
    assert pointer is not None

    assert REPORT_KEY in artifacts, f"no {REPORT_KEY!r} artifact; the run has {sorted(artifacts)}"
    report = artifacts[REPORT_KEY]
    assert report["type"] == "markdown"
    markdown = str(report["data"])
    assert markdown.startswith(f"# Retrain of `{PROJECT}`"), markdown[:200]
    assert pointer.model_id in markdown and "promoted" in markdown.splitlines()[0]
    with httpx.Client(base_url=work_pool_run.api_url, timeout=30.0, trust_env=False) as client:
        message = client.get(f"/flow_runs/{work_pool_run.flow_run_id}").json()["state"]["message"]
    assert message.startswith(f"promoted {pointer.model_id}: "), message
    assert f"**{message}**" in markdown, "the report does not open with the run's outcome"
    assert report["description"] == f"{PROJECT}: {message}"
    # The flow run's own artifact (not a task run's): the run page lists it as the run's report.
    assert report["task_run_id"] is None and report["flow_run_id"] == work_pool_run.flow_run_id, report
    figures = figures_in(markdown)
    assert len(figures) >= 1, "the report embeds no figure"
    for uri in figures:
        width, height = png_size(data_uri_png(uri))
        assert width > MIN_IMAGE_PX and height > MIN_IMAGE_PX

    assert CONFUSION_KEY in artifacts, f"no {CONFUSION_KEY!r} artifact; the run has {sorted(artifacts)}"
    image = artifacts[CONFUSION_KEY]
    assert image["type"] == "image"
    width, height = png_size(data_uri_png(str(image["data"])))
    assert width > MIN_IMAGE_PX and height > MIN_IMAGE_PX
    assert image["data"] in figures, "the report's confusion matrix is not the published image"


# --------------------------------------------------------------------------------------------- the UI


# The v2 run page's Artifacts tab: one card per artifact of the run (its key as the card's heading), each a
# link to that artifact's page (/artifacts/artifact/<id>; prefect 3.9's v2 UI no longer links the key page).
# Null until every wanted key has a card showing its description (rendered lazily, after the heading).
CARDS_JS = """
(() => {
  const want = %(want)s;  // key -> its description
  const cards = {};
  for (const a of Array.from(document.querySelectorAll("a[href]"))) {
    const heading = a.querySelector("h3, h4");
    if (!heading) continue;
    const key = heading.innerText.trim();
    const text = a.innerText.replace(/\\s+/g, " ");
    if (key in want && text.includes(want[key])) cards[key] = {href: a.getAttribute("href"), text};
  }
  return Object.keys(want).every(k => k in cards) ? cards : null;
})()
"""


def test_ui_run_page_lists_the_artifacts(
    browser: Browser,
    work_pool_run: FlowRunDone,
    artifacts: dict[str, dict[str, Any]],
    ui_bases: dict[str, str],
    progress: Reporter,
) -> None:
    if "v2" not in ui_bases:
        pytest.skip("this server has no v2 UI (the one that opens a run's Artifacts tab from the URL)")
    keys = (REPORT_KEY, CONFUSION_KEY)
    want = {key: normalise(str(artifacts[key]["description"])) for key in keys}
    assert want[REPORT_KEY].startswith(f"{PROJECT}: promoted "), want  # the card says the outcome
    url = f"{work_pool_run.ui_url}{ui_bases['v2']}/runs/flow-run/{work_pool_run.flow_run_id}?tab=Artifacts"
    page = browser.open(url)
    try:
        cards: dict[str, dict[str, str]] = page.wait_for(
            f"cards for the run's artifacts {sorted(want)} with their descriptions",
            CARDS_JS % {"want": json.dumps(want)},
        )
        shot = full_page_screenshot(page, OUTPUT / "ui-v2-run-artifacts.png")
        for key in keys:
            # The card links to this run's artifact, not to another run's of the same key.
            artifact_id = artifacts[key]["id"]
            assert cards[key]["href"].endswith(f"/artifacts/artifact/{artifact_id}"), (key, cards[key])
        # Following the report's link opens the report.
        page.evaluate(f"document.querySelector('a[href=\"{cards[REPORT_KEY]['href']}\"]').click()")
        heading = report_phrases(str(artifacts[REPORT_KEY]["data"]))[0]
        page.wait_for(
            "the report after following its card's link",
            f"location.pathname.endsWith('/artifacts/artifact/{artifacts[REPORT_KEY]['id']}') && "
            f"document.body.innerText.includes({json.dumps(heading)})",
        )
        opened = full_page_screenshot(page, OUTPUT / "ui-v2-run-artifacts-report-opened.png")
    finally:
        page.close()
    progress(
        f"UI v2 run page: cards {sorted(cards)} link to /artifacts/artifact/<id>; the report's link opens "
        f"{heading!r} - {url} (screenshots {shot}, {opened})"
    )


# The artifact links of the page in document order: [href, the link's text].
ARTIFACT_LINKS_JS = """
Array.from(document.querySelectorAll("a[href*='/artifacts/artifact/']"))
  .map(a => [a.getAttribute("href"), a.innerText.replace(/\\s+/g, " ")])
"""


# Clicks the tab labelled %(tab)s once it is on the page (the innermost element with exactly that text; the
# click bubbles to the tab's handler); true when clicked.
OPEN_TAB_JS = """
(() => {
  const label = %(tab)s;
  const tab = Array.from(document.querySelectorAll("body *"))
    .filter(e => e.tagName !== "OPTION" && e.offsetParent !== null)
    .filter(e => e.innerText && e.innerText.trim() === label)
    .find(e => !Array.from(e.children).some(c => c.innerText && c.innerText.trim() === label));
  if (!tab) return false;
  tab.click();
  return true;
})()
"""


def test_ui_v1_run_page_lists_the_report_first(
    browser: Browser,
    work_pool_run: FlowRunDone,
    artifacts: dict[str, dict[str, Any]],
    ui_bases: dict[str, str],
    progress: Reporter,
) -> None:
    """The classic UI's Artifacts tab lists the flow run's own artifacts ("Flow run") above the task runs'
    ones: the report, created in the flow, is the first card, with the outcome as its description."""
    if "v1" not in ui_bases:
        pytest.skip("this server has no classic UI")
    ids = {str(a["id"]) for a in artifacts.values()}
    url = f"{work_pool_run.ui_url}{ui_bases['v1']}/runs/flow-run/{work_pool_run.flow_run_id}"
    page = browser.open(url)
    try:
        # The classic UI opens a run on its Logs tab (it ignores ?tab=); click "Artifacts" as a user does.
        page.wait_for("the run page's Artifacts tab", OPEN_TAB_JS % {"tab": json.dumps("Artifacts")})
        links: list[list[str]] = page.wait_for(
            f"links to the run's {len(ids)} artifacts",
            f"(() => {{ const l = {ARTIFACT_LINKS_JS}; "
            f"return {json.dumps(sorted(ids))}.every(i => l.some(x => x[0].endsWith(i))) ? l : null; }})()",
        )
        text = normalise(page.evaluate("document.body.innerText"))
        shot = full_page_screenshot(page, OUTPUT / "ui-v1-run-artifacts.png")
    finally:
        page.close()
    report = artifacts[REPORT_KEY]
    first_href, first_text = links[0]
    assert first_href.endswith(f"/artifacts/artifact/{report['id']}"), f"{url}: the first card is {links[0]}"
    assert REPORT_KEY in first_text, links[0]
    # Under the "Flow run" heading; every task run's artifact comes under "Task runs", after it.
    at = text.find(REPORT_KEY)
    assert text.rfind("Flow run", 0, at) >= 0, text[:3000]
    task_runs = text.find("Task runs", at)
    assert task_runs > at, text[:3000]
    for key in artifacts:
        if key != REPORT_KEY:
            assert text.find(key) > task_runs, f"{url}: {key} is not listed under 'Task runs'"
    progress(f"UI v1 run page: the report is the first artifact, under 'Flow run' - {url} -> {shot}")


@pytest.mark.parametrize("ui", UIS)
def test_ui_renders_the_report(
    ui: str,
    browser: Browser,
    work_pool_run: FlowRunDone,
    artifacts: dict[str, dict[str, Any]],
    ui_bases: dict[str, str],
    progress: Reporter,
) -> None:
    if ui not in ui_bases:
        pytest.skip(f"this server has no {ui} UI")
    report = artifacts[REPORT_KEY]
    markdown = str(report["data"])
    figures = figures_in(markdown)
    confusion = str(artifacts[CONFUSION_KEY]["data"])
    phrases = report_phrases(markdown)
    url = f"{work_pool_run.ui_url}{ui_bases[ui]}/artifacts/artifact/{report['id']}"
    page = browser.open(url)
    try:
        wait_for_images(page, f"the report with its {len(figures)} figures", phrases[0], len(figures), None)
        full_page_screenshot(page, OUTPUT / f"ui-{ui}-report.png")
        found = wait_for_images(page, "the report after resizing", phrases[0], len(figures), confusion)
    finally:
        page.close()

    text = normalise(found["text"])
    missing = [p for p in phrases if p not in text]
    assert not missing, f"{url} does not show {missing}"
    images = found["images"]
    assert len(images) == len(figures), f"{url} shows {len(images)} figures; the report has {len(figures)}"
    for img in images:
        assert img["decoded"] and img["naturalWidth"] > MIN_IMAGE_PX, f"{url}: a figure did not render: {img}"
        assert img["width"] > MIN_IMAGE_PX and img["height"] > MIN_IMAGE_PX, f"{url}: a figure is tiny: {img}"
    matrix = [img for img in images if img["matches"]]
    assert matrix, f"{url} does not show the confusion matrix published as {CONFUSION_KEY}"
    assert (matrix[0]["naturalWidth"], matrix[0]["naturalHeight"]) == png_size(data_uri_png(confusion))
    progress(
        f"UI {ui} report rendered: {len(phrases)} headings/decision/gate cells found, {len(images)} figures "
        f"(confusion matrix {matrix[0]['naturalWidth']}x{matrix[0]['naturalHeight']} px) - {url} "
        f"-> {OUTPUT / f'ui-{ui}-report.png'}"
    )


@pytest.mark.parametrize("ui", UIS)
def test_ui_renders_the_confusion_matrix(
    ui: str,
    browser: Browser,
    work_pool_run: FlowRunDone,
    artifacts: dict[str, dict[str, Any]],
    ui_bases: dict[str, str],
    progress: Reporter,
) -> None:
    if ui not in ui_bases:
        pytest.skip(f"this server has no {ui} UI")
    image = artifacts[CONFUSION_KEY]
    uri = str(image["data"])
    url = f"{work_pool_run.ui_url}{ui_bases[ui]}/artifacts/artifact/{image['id']}"
    page = browser.open(url)
    try:
        wait_for_images(page, "the confusion-matrix image", CONFUSION_KEY, 1, uri)
        full_page_screenshot(page, OUTPUT / f"ui-{ui}-confusion-matrix.png")
        found = wait_for_images(page, "the confusion-matrix image after resizing", CONFUSION_KEY, 1, uri)
        shown = [img for img in found["images"] if img["matches"]]
        assert shown, f"{url} does not show the artifact's image"
        img = shown[0]
        crop = page.screenshot(
            OUTPUT / f"ui-{ui}-confusion-matrix-crop.png",
            clip={"x": img["x"], "y": img["y"], "width": img["width"], "height": img["height"]},
        )
    finally:
        page.close()
    assert img["decoded"], f"{url}: the image does not decode (a broken-image icon): {img}"
    assert (img["naturalWidth"], img["naturalHeight"]) == png_size(data_uri_png(uri))
    assert img["naturalWidth"] > MIN_IMAGE_PX and img["width"] > MIN_IMAGE_PX and img["height"] > MIN_IMAGE_PX
    if image["description"]:
        assert normalise(str(image["description"])) in normalise(found["text"])
    crop_w, crop_h = assert_not_blank(crop)
    progress(
        f"UI {ui} confusion matrix rendered: natural {img['naturalWidth']}x{img['naturalHeight']} px, "
        f"on screen {img['width']:.0f}x{img['height']:.0f} px, crop {crop_w}x{crop_h} not blank - {url}"
    )


# --------------------------------------------------------------------------------------------- the stack


def test_deploy_all_and_deployment_ls_exit_0(work_pool_run: FlowRunDone, progress: Reporter) -> None:
    """The README's ``prefect deploy --all`` and ``prefect deployment ls`` both exited 0 (the fixture fails
    otherwise); every deployment of prefect.yaml is listed."""
    for name in DEPLOYMENTS:
        assert f"{FLOW_NAME}/{name}" in work_pool_run.deploy_output, work_pool_run.deploy_output
        assert f"{FLOW_NAME}/{name}" in work_pool_run.deployment_ls, work_pool_run.deployment_ls
    assert "422" not in work_pool_run.deploy_output and "Unprocessable" not in work_pool_run.deploy_output
    progress(
        "prefect deploy --all rc 0; prefect deployment ls rc 0:\n" + work_pool_run.deployment_ls.rstrip()
    )


def test_schedule_creates_a_run_that_the_worker_completes(
    work_pool_run: FlowRunDone, progress: Reporter
) -> None:
    with httpx.Client(base_url=work_pool_run.api_url, timeout=30.0, trust_env=False) as client:
        run = client.get(f"/flow_runs/{work_pool_run.scheduled_run_id}").json()
        deployment = client.get(f"/deployments/{run['deployment_id']}").json()
    assert deployment["name"] == SCHEDULE_DEPLOYMENT
    assert run["auto_scheduled"] is True, "this run was not created by the server's scheduler"
    assert "auto-scheduled" in run["tags"]
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == POOL and run["infrastructure_pid"], "the worker did not run it"
    assert run["state"]["message"].startswith("unchanged: nothing new to train"), run["state"]
    progress(
        f"scheduled run {run['name']!r} ({run['id']}): auto_scheduled, "
        f"expected {run['expected_start_time']}, "
        f"{run['state_name']} on pool {run['work_pool_name']} - {run['state']['message']}"
    )


def test_server_log_has_no_errors(work_pool_run: FlowRunDone, progress: Reporter) -> None:
    text = work_pool_run.server_log.read_text(encoding="utf-8", errors="replace")
    bad = [line for line in text.splitlines() if any(marker in line for marker in SERVER_LOG_ERRORS)]
    assert not bad, f"{work_pool_run.server_log} has errors:\n" + "\n".join(bad[:40])
    progress(
        f"server log: {len(text.splitlines())} lines, no Traceback/ERROR/422 ({work_pool_run.server_log})"
    )


# --------------------------------------------------------------------------------------------- outcomes


def _runs_by_id(work_pool_run: FlowRunDone) -> dict[str, dict[str, Any]]:
    ids = [work_pool_run.flow_run_id, work_pool_run.rerun_id, work_pool_run.scheduled_run_id]
    with httpx.Client(base_url=work_pool_run.api_url, timeout=30.0, trust_env=False) as client:
        return {i: client.get(f"/flow_runs/{i}").json() for i in ids}


def test_each_run_says_what_it_decided(work_pool_run: FlowRunDone, progress: Reporter) -> None:
    """Name, tags and state message of each run carry its outcome (promoted, then unchanged)."""
    pointer = ModelStore.local(work_pool_run.nluflow_home / "store").active(PROJECT)
    assert pointer is not None
    model = pointer.model_id
    expected = {
        work_pool_run.flow_run_id: ("promoted", f"promoted {model}: "),
        work_pool_run.rerun_id: ("unchanged", f"unchanged: nothing new to train: candidate {model} is the"),
        work_pool_run.scheduled_run_id: ("unchanged", "unchanged: nothing new to train: "),
    }
    for run_id, run in _runs_by_id(work_pool_run).items():
        outcome, message = expected[run_id]
        assert run["name"] == f"retrain-{PROJECT}-{outcome}-{model}", run["name"]
        assert {"nluflow", f"project:{PROJECT}", f"outcome:{outcome}"} <= set(run["tags"]), run["tags"]
        assert run["state"]["message"].startswith(message), run["state"]
        progress(
            f"{run['name']}: {run['state_name']}, tags {run['tags']}, message {run['state']['message']!r}"
        )


@pytest.mark.parametrize("ui", UIS)
def test_ui_runs_list_shows_each_outcome(
    ui: str,
    browser: Browser,
    work_pool_run: FlowRunDone,
    ui_bases: dict[str, str],
    progress: Reporter,
) -> None:
    """Must-show 3: the runs list tells promoted from unchanged without opening a run."""
    if ui not in ui_bases:
        pytest.skip(f"this server has no {ui} UI")
    runs = _runs_by_id(work_pool_run)
    outcomes = {
        r["name"]: t.split(":", 1)[1] for r in runs.values() for t in r["tags"] if t.startswith("outcome:")
    }
    assert sorted(set(outcomes.values())) == ["promoted", "unchanged"], outcomes
    url = f"{work_pool_run.ui_url}{ui_bases[ui]}/runs"
    page = browser.open(url)
    try:
        rows: dict[str, list[str]] = page.wait_for(
            f"the runs {sorted(outcomes)} in the runs list, each with its outcome tag",
            ROWS_JS % {"names": json.dumps(sorted(outcomes))},
        )
        shot = full_page_screenshot(page, OUTPUT / f"ui-{ui}-runs-list.png")
    finally:
        page.close()
    for name, outcome in outcomes.items():
        for row in rows[name]:  # every row of that name shows its own outcome, and no other
            assert f"outcome:{outcome}" in row, (
                f"{url}: the row of {name} does not show outcome:{outcome}: {row}"
            )
            others = {f"outcome:{o}" for o in ("promoted", "rejected", "blocked", "unchanged", "failed")}
            assert not (others - {f"outcome:{outcome}"}) & set(row.split()), row
    progress(
        f"UI {ui} runs list: "
        + "; ".join(f"{len(rows[n])} x {n} tagged outcome:{o}" for n, o in sorted(outcomes.items()))
        + f" - {url} -> {shot}"
    )


# Null until each named run has at least one row on the page; then name -> the text of each of its rows (the
# nearest ancestor of the name's link that also holds the run's tags).
ROWS_JS = """
(() => {
  const names = %(names)s;
  const rows = {};
  for (const a of Array.from(document.querySelectorAll("a"))) {
    const name = a.innerText.trim();
    if (!names.includes(name)) continue;
    let row = a.parentElement;
    while (row && !row.innerText.includes("outcome:")) row = row.parentElement;
    if (!row || row === document.body) continue;
    (rows[name] = rows[name] || []).push(row.innerText.replace(/\\s+/g, " "));
  }
  return names.every(n => n in rows) ? rows : null;
})()
"""
