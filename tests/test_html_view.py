"""The cells.html view in a real browser: headless Chromium renders it, and the screenshot
must show the coloured text and the colour legend, with no script errors on the console.
Skipped where no Chromium is installed (CI installs Debian's `chromium`)."""
import shutil
import subprocess

import pytest

from fastseq.cli import main

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def screenshot(page, png):
    """Renders `page` headless; returns Chromium's log (console messages included)."""
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--screenshot={png}", "--window-size=1100,900", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and png.exists(), result.stderr
    return result.stderr


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")
def test_cells_page_renders_coloured_text_and_legend(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "charlm", "--data", "hello", "--hidden", "16", "--embed", "8", "--layers", "1",
                 "--seq-len", "16", "--batch-size", "2", "--steps", "30", "--eval-every", "30",
                 "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    page = tmp_path / "cells.html"
    assert main(["cells", "--checkpoint", str(run / "checkpoint.pt"), "--data", "hello", "--chars", "400",
                 "--out", str(page)]) == 0
    png = tmp_path / "cells.png"
    log = screenshot(page, png)
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console

    from matplotlib.image import imread
    rgb = (imread(png)[..., :3] * 255).round().astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # The legend: pure red (+1) and pure blue (-1) swatches.
    assert ((r == 255) & (g == 0) & (b == 0)).sum() > 50
    assert ((r == 0) & (g == 0) & (b == 255)).sum() > 50
    # The text: many characters on tinted backgrounds (neither white nor a legend colour).
    tinted = ((r == 255) & (g == b) & (g > 0) & (g < 250)) | ((b == 255) & (r == g) & (r > 0) & (r < 250))
    assert tinted.sum() > 2000
    # Dark glyph pixels on those backgrounds: the characters themselves are drawn.
    assert (rgb.max(axis=-1) < 80).sum() > 500
