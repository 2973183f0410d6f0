"""report.html as a user sees it: opened in a real headless browser (Debian's Chromium) at a desktop's 1280 px
and a phone's 390 px, the page body never scrolls sideways and every image loads.

The report is one `kit blend` makes from synthetic run folders (`helpers.blend_fixtures`). The page is opened
from a copy of the report folder with a probe script appended that writes, once the page has loaded, the
body's scroll width and each image's loaded state into the DOM; `chromium --dump-dom` prints that DOM.
Screenshots go beside it (`KIT_SCREENSHOTS=folder` keeps them). Skipped, with how to get the browser, where
no Chromium is installed; `.ci/run` installs it first, so CI always runs this test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.blend_fixtures import make_baseline_run, make_cohort
from test_blend_cli import SPECS, _workspace

from kit.cli import main as kit_main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
WIDTHS = {"desktop": 1280, "phone": 390}
PAGE_HEIGHT = 2400
BROWSER_TIMEOUT_S = 300  # seconds on a loaded machine; a few when idle
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Appended to a copy of report.html: once loaded, the page's widths and each image's state go to the frame
# holding it (postMessage works between file:// pages).
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
  parent.postMessage(JSON.stringify({viewport: window.innerWidth, body: document.body.scrollWidth,
                                     page: document.documentElement.scrollWidth, images: imgs}), '*');
});
</script>"""
# Headless Chromium's window is at least 500 px wide, so the page is shown in a frame of the width wanted (a
# phone's layout viewport), as a phone shows it; the frame's holder writes what the page reported into its DOM.
HOLDER = """<!doctype html><html><body style="margin:0">
<iframe src="probe.html" style="border:0;width:{width}px;height:{height}px"></iframe>
<script>window.addEventListener('message', e => {{
  const pre = document.createElement('pre'); pre.id = 'kit-probe'; pre.textContent = e.data;
  document.body.appendChild(pre); }});</script></body></html>"""
MIN_WINDOW = 500


pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium: `apt-get install -y chromium` (Debian) "
                                                        "runs the browser test of report.html")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--allow-file-access-from-files", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    cohort = make_cohort(n=400, n_test=60)
    recipe = ('[runs]\nglobs = ["*"]\n[method]\nname = "greedy"\n[calibration]\nmethod = "platt"\n[report]\n'
              'compare = ["rank_mean", "stacking"]\nbootstrap = 100\n')
    ws = _workspace(tmp, cohort, SPECS, recipe=recipe)
    make_baseline_run(ws["runs"], cohort, 0.6)
    assert kit_main(["blend", "t", "--ensembles", str(ws["ens"]), "--runs", str(ws["runs"])]) == 0
    return ws["out"]


@pytest.mark.parametrize("device", WIDTHS)
def test_report_html_fits_and_loads_every_image(report_dir: Path, tmp_path: Path, device: str) -> None:
    width = WIDTHS[device]
    page = tmp_path / "page"
    shutil.copytree(report_dir, page)
    html = (page / "report.html").read_text(encoding="utf-8")
    (page / "probe.html").write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    holder = page / "holder.html"
    holder.write_text(HOLDER.format(width=width, height=PAGE_HEIGHT), encoding="utf-8")
    size = f"--window-size={max(width, MIN_WINDOW)},{PAGE_HEIGHT}"
    dom = _chromium(size, "--dump-dom", holder.as_uri())
    found = re.search(r"<pre id=\"kit-probe\">(.*?)</pre>", dom.stdout)
    assert found, dom.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe["viewport"] == width
    assert probe["body"] <= width and probe["page"] <= width, f"the page scrolls sideways at {width} px: {probe}"
    images = probe["images"]
    assert len(images) == html.count("<img ") >= 5 and all(i["ok"] for i in images), images

    shots = Path(os.environ.get("KIT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / f"report-{width}px.png"
    _chromium(size, f"--screenshot={shot}", holder.as_uri())
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 10_000
