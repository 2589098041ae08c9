"""The retrain flow deployed from ``prefect.yaml`` on a process work pool, run by a real worker against a
real ``prefect server start``; then what a user sees of that run in the server's UI, in headless Chromium.

One module-scoped stack (see ``conftest.py``) serves every test here: server up, pool created, worker up,
``prefect deploy --name retrain-local`` from the repo root, ``prefect deployment run``, run Completed.
Screenshots land in ``tests/e2e/output/``.
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

from nluflow.audit import AuditLog
from nluflow.registry import ModelStore

from .conftest import (
    OUTPUT,
    POOL,
    PROJECT,
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
            # sort and limit given explicitly: prefect 3.8.8's client sends nulls, which get a 422.
            json={
                "flow_runs": {"id": {"any_": [work_pool_run.flow_run_id]}},
                "sort": "CREATED_DESC",
                "limit": 200,
                "offset": 0,
            },
        )
    response.raise_for_status()
    by_key: dict[str, dict[str, Any]] = {}
    for artifact in response.json():
        by_key.setdefault(str(artifact["key"]), artifact)
    return by_key


@pytest.fixture(scope="module")
def ui_bases(work_pool_run: FlowRunDone) -> dict[str, str]:
    """Where each UI lives on this server (``/`` and ``/v2`` in prefect 3.8.8), from its /ui-settings."""
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
    last = json.loads(audit.path.read_text(encoding="utf-8").splitlines()[-1])
    assert last["flow_run_id"] == work_pool_run.flow_run_id
    assert last["promoted"] is True and last["model_id"] == pointer.model_id
    assert last["manifest_sha256"] == pointer.manifest_sha256
    progress(
        f"model promoted in the store: {PROJECT} active = {pointer.model_id} "
        f"({len(manifest.files)} files, sha256 verified; manifest {pointer.manifest_sha256[:12]}; "
        f"audit line {last['seq']} verified) - {pointer.reason}"
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
    assert pointer.reason in markdown, "the report does not state the decision the store recorded"
    assert report["description"] == f"{PROJECT}: {pointer.reason}"
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


def test_ui_run_page_lists_the_artifacts(
    browser: Browser,
    work_pool_run: FlowRunDone,
    artifacts: dict[str, dict[str, Any]],
    ui_bases: dict[str, str],
    progress: Reporter,
) -> None:
    if "v2" not in ui_bases:
        pytest.skip("this server has no v2 UI (the one that opens a run's Artifacts tab from the URL)")
    url = f"{work_pool_run.ui_url}{ui_bases['v2']}/runs/flow-run/{work_pool_run.flow_run_id}?tab=Artifacts"
    page = browser.open(url)
    try:
        keys = json.dumps([REPORT_KEY, CONFUSION_KEY])
        page.wait_for(
            f"the run's artifacts {keys}",
            f"{keys}.every(k => (document.body ? document.body.innerText : '').includes(k))",
        )
        hrefs: list[str] = page.evaluate("Array.from(document.links).map(a => a.getAttribute('href'))")
        shot = full_page_screenshot(page, OUTPUT / "ui-v2-run-artifacts.png")
    finally:
        page.close()
    for key in (REPORT_KEY, CONFUSION_KEY):
        assert any(h and h.endswith(f"/artifacts/key/{key}") for h in hrefs), f"no link to {key} on {url}"
    progress(f"UI v2 run page lists {REPORT_KEY} and {CONFUSION_KEY}: {url} (screenshot {shot})")


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
