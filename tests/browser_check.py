"""Open a Label Studio task in headless Chromium and check that its image really loaded.

Run by the tests with the Python of Label Studio's own virtual environment (Playwright lives
there, not in catdog's), against Debian's ``chromium``; never ``playwright install``.

    python browser_check.py URL EMAIL PASSWORD PROJECT TASK IMAGE SCREENSHOT

IMAGE is the task's ``data.image`` (a path on the server, or a full URL).

Prints one JSON object: the labeling image's ``naturalWidth`` and ``naturalHeight``, and the
HTTP status of each ``/data/...`` request the page made; exits 1 when the image did not load.
"""

from __future__ import annotations

import json
import sys
import time
from urllib.parse import urljoin

from playwright.sync_api import sync_playwright

#: Debian's chromium package; Playwright's own browser downloads are never used.
CHROMIUM = "/usr/bin/chromium"
#: Milliseconds to wait for the login, the page and the image.
WAIT_MS = 90_000
#: The labeling interface's image once it has finished loading (broken: naturalWidth 0).
LABELING_IMAGE = """() => {
  const img = document.querySelector('.lsf-image img');
  return img && img.complete
    ? {naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight} : null;
}"""


def main(argv: list[str]) -> int:
    url, email, password, project, task, image, screenshot = argv
    image_url = urljoin(url + "/", image)
    statuses: dict[str, int] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on(
            "response",
            lambda r: statuses.__setitem__(r.url, r.status) if "/data/" in r.url else None,
        )
        page.goto(f"{url}/user/login/", wait_until="domcontentloaded", timeout=WAIT_MS)
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        with page.expect_navigation(timeout=WAIT_MS):
            page.click("button[type=submit]")
        page.goto(
            f"{url}/projects/{project}/data?task={task}",
            wait_until="domcontentloaded",
            timeout=WAIT_MS,
        )
        # The labeling interface fetches the task's image (the response seen below) and draws
        # it as an <img> inside .lsf-image; wait until that image finished loading, or the
        # fetch failed.
        deadline = time.monotonic() + WAIT_MS / 1000
        size = None
        while time.monotonic() < deadline:
            size = page.evaluate(LABELING_IMAGE)
            # Only this task's image counts: the task list shows the others' thumbnails.
            if size is not None or statuses.get(image_url, 0) >= 400:
                break
            page.wait_for_timeout(250)
        page.wait_for_timeout(500)  # let the canvas draw before the picture is taken
        page.screenshot(path=screenshot, full_page=True)
        browser.close()
    result = dict(size or {"naturalWidth": 0, "naturalHeight": 0})
    result["requests"] = statuses
    print(json.dumps(result))
    if not result["naturalWidth"]:
        print(f"the image did not load: {result}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
