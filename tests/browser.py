"""Open a report page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) and
say what a person would see: did every image and plot load, was anything fetched from the network,
did the page log errors. Used by the report tests; ``.ci/run`` installs Chromium when it is missing."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["chromium_path", "check_page", "screenshot"]

#: Flags that keep Chromium off the network by itself (without them it tries Google's hosts at every
#: start, and this machine's closed network refuses them).
_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage"]

_INSPECT = """() => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0))
                     .map(i => i.alt || i.src.slice(0, 60));
  const svgs = Array.from(document.querySelectorAll('svg'));
  const emptySvg = svgs.filter(s => { const r = s.getBoundingClientRect();
                                      return !(r.width > 0 && r.height > 0); }).length;
  return {images: imgs.length, broken_images: broken, svg_count: svgs.length,
          empty_svgs: emptySvg, title: document.title, text: document.body.innerText};
}"""


def chromium_path() -> str | None:
    """The Chromium binary: $CHROMIUM, else Debian's chromium on PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")


def _open(path: Path, fn):
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no Chromium: install Debian's chromium (apt-get install chromium)")
    url = Path(path).resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests: list[str] = []
            errors: list[str] = []

            def on_route(route):
                u = route.request.url
                if u == url or u.startswith("data:") or u.startswith("about:"):
                    route.continue_()
                else:  # anything else would be a network (or stray file) fetch: record and block
                    requests.append(u)
                    route.abort()

            page.route("**/*", on_route)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load")
            return fn(page, requests, errors)
        finally:
            browser.close()


def check_page(path: str | os.PathLike) -> dict:
    """Load ``path`` (file://) and report ``images_loaded`` (all ``<img>`` decoded with a size),
    ``broken_images``, ``network_requests`` (every request other than the page itself and data:
    URLs; they are blocked), ``svg_count``, ``empty_svgs``, ``console_errors``, ``title``, ``text``."""
    def inspect(page, requests, errors):
        info = page.evaluate(_INSPECT)
        info["images_loaded"] = not info["broken_images"]
        info["network_requests"] = list(requests)
        info["console_errors"] = list(errors)
        return info

    return _open(Path(path), inspect)


def screenshot(path: str | os.PathLike, png: str | os.PathLike) -> None:
    """A full-page PNG of the rendered report (to look at it)."""
    _open(Path(path), lambda page, *_: page.screenshot(path=str(png), full_page=True))
