"""report.html in a real headless browser (Chromium): it renders, every image loads, a screenshot is saved.

Chromium comes from the system packages (`apt-get install chromium`; .ci/run installs it). Without it
the test is skipped. Set VLMPREF_SCREENSHOT_DIR to keep the screenshot.
"""

import os
import shutil

import pytest
from PIL import Image

from vlmpref.eval.evaluate import read_eval
from vlmpref.report.browser import check_report, find_chromium
from vlmpref.report.compare import compare_runs
from vlmpref.report.html import write_report

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="Chromium is not installed (Debian: apt-get install chromium)")


def test_report_renders_and_its_images_load(eval_pair, tmp_path):
    before, after = read_eval(eval_pair[0]), read_eval(eval_pair[1])
    paths = write_report(before, after, compare_runs(before, after), tmp_path / "report", examples=4)
    shot = tmp_path / "report.png"
    result = check_report(paths["html"], screenshot=shot, width=1200, height=1600)
    assert result["title"] == "vlmpref: before vs after tuning"
    assert result["images"] == 1 + 4  # the bar chart and one picture per example
    assert result["loaded"] == result["images"] and result["broken"] == []
    assert result["tables"] >= 2
    image = Image.open(shot)
    assert image.size == (1200, 1600)
    assert len(set(image.convert("L").resize((60, 80)).getdata())) > 10  # not a blank page
    if os.environ.get("VLMPREF_SCREENSHOT_DIR"):
        os.makedirs(os.environ["VLMPREF_SCREENSHOT_DIR"], exist_ok=True)
        shutil.copy(shot, os.environ["VLMPREF_SCREENSHOT_DIR"])


def test_a_broken_image_is_caught(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><head><title>t</title></head><body><img src="data:image/png;base64,iVBORw0KGgo=">'
                    '<img src="missing.png"></body></html>')
    result = check_report(page)
    assert result["images"] == 2 and result["loaded"] == 0 and len(result["broken"]) == 2
