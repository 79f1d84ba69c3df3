"""The review viewer in headless chromium: zoom changes the displayed scale, a finding click goes
to its key slice with its outline highlighted, the heat map toggle changes the pixels on screen,
window presets re-render the frame, and worklist → review → approve with the keyboard."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from node.db.orm import Delivery, Job
from tests.web.conftest import PASSWORD, Console
from tests.web.processed import LESION_SLICES, ProcessedStudy
from tests.web.test_browser import _shot, browser, server

__all__ = ["browser", "server"]  # the fixtures, shared with the console's other browser tests
pytestmark = [pytest.mark.browser, pytest.mark.slow]
KEY_SLICE = 9  # the lesion's largest cross-section (tests/web/processed.py)


def _login(driver: object, base: str, username: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/login")  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 30)
    wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login-submit").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "review-badge")))


def _frame_ready(driver: object) -> bool:
    return bool(
        driver.execute_script(  # type: ignore[attr-defined]
            "var i=document.getElementById('frame-image');"
            "var shown=document.getElementById('viewer').getAttribute('data-shown');"
            "return !!shown && i.src.indexOf('data:image/png') === 0"
            " && i.complete && i.naturalWidth === 256;"
        )
    )


def _viewer_pixels(driver: object) -> np.ndarray:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, "viewer")  # type: ignore[attr-defined]
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(int)


def _review_without_overlays(
    driver: object, base: str, job_id: int, hide: tuple[str, ...] = ("toggle-mask", "toggle-labels")
) -> np.ndarray:
    """Log in as a radiologist, open the job's review with the ``hide`` toggles switched off, so
    that only what a test switches on next changes the pixels; the viewer's pixels then."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _login(driver, base, "radiologist1")
    driver.get(f"{base}/review/{job_id}")  # type: ignore[attr-defined]
    WebDriverWait(driver, 30).until(_frame_ready)
    for toggle in hide:
        driver.find_element(By.ID, toggle).click()  # type: ignore[attr-defined]
    return _viewer_pixels(driver)


def _toggle_map_on(driver: object, kind: str) -> None:
    """Switch the ``kind`` map (explanation, anomaly) on: its image shows once it has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = driver.find_element(By.ID, f"{kind}-image")  # type: ignore[attr-defined]
    assert not image.is_displayed()
    driver.find_element(By.ID, f"toggle-{kind}").click()  # type: ignore[attr-defined]
    assert image.is_displayed()
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            f"var i=document.getElementById('{kind}-image');"
            "return i.complete && i.naturalWidth === 256;"
        )
    )


def _opacity(driver: object, percent: int) -> None:
    driver.execute_script(  # type: ignore[attr-defined]
        "var s=document.getElementById('opacity-slider');"
        f"s.value='{percent}';s.dispatchEvent(new Event('input'));"
    )


def _fade_and_key_off(driver: object, kind: str, key: str, before: np.ndarray) -> None:
    """The opacity slider at 0 % shows the frame alone; at 50 %, ``key`` switches the map off and
    the frame is back as ``before``."""
    from selenium.webdriver.common.by import By

    _opacity(driver, 0)
    assert np.abs(_viewer_pixels(driver) - before).sum(axis=2).max() < 30
    _opacity(driver, 50)
    driver.find_element(By.TAG_NAME, "body").send_keys(key)  # type: ignore[attr-defined]
    assert not driver.find_element(By.ID, f"{kind}-image").is_displayed()  # type: ignore[attr-defined]
    assert np.abs(_viewer_pixels(driver) - before).sum(axis=2).max() < 30


def test_zoom_finding_click_heatmap_and_window(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, study = server
    driver = browser
    wait = WebDriverWait(driver, 30)
    _login(driver, base, "radiologist1")
    driver.get(f"{base}/review/{study.job_id}")  # type: ignore[attr-defined]
    wait.until(_frame_ready)
    js = driver.execute_script  # type: ignore[attr-defined]
    assert "a approve" in driver.find_element(By.ID, "shortcut-help").text  # type: ignore[attr-defined]

    # zoom: the image is drawn bigger, and Reset brings it back
    width = js("return document.getElementById('frame-image').getBoundingClientRect().width")
    driver.find_element(By.ID, "zoom-in").click()  # type: ignore[attr-defined]
    driver.find_element(By.ID, "zoom-in").click()  # type: ignore[attr-defined]
    zoomed = js("return document.getElementById('frame-image').getBoundingClientRect().width")
    assert zoomed == pytest.approx(width * 1.25 * 1.25, rel=0.01)
    assert driver.find_element(By.ID, "zoom-level").text == "156%"  # type: ignore[attr-defined]
    # drag pans: the zoomed image moves with the pointer
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    viewer = driver.find_element(By.ID, "viewer")  # type: ignore[attr-defined]
    left = js("return document.getElementById('frame-image').getBoundingClientRect().left")
    ActionChains(driver).move_to_element(viewer).click_and_hold().move_by_offset(
        40, 0
    ).release().perform()
    moved = js("return document.getElementById('frame-image').getBoundingClientRect().left")
    assert moved == pytest.approx(left + 40, abs=2)
    driver.find_element(By.ID, "reset-view").click()  # type: ignore[attr-defined]
    assert js(
        "return document.getElementById('frame-image').getBoundingClientRect().width"
    ) == pytest.approx(width, rel=0.01)
    # the wheel zooms too, around the pointer
    js(
        "var v=document.getElementById('viewer'),r=v.getBoundingClientRect();"
        "v.dispatchEvent(new WheelEvent('wheel',{deltaY:-100,clientX:r.left+10,"
        "clientY:r.top+10,bubbles:true,cancelable:true}));"
    )
    assert driver.find_element(By.ID, "zoom-level").text == "120%"  # type: ignore[attr-defined]
    driver.find_element(By.ID, "reset-view").click()  # type: ignore[attr-defined]
    wait.until(_frame_ready)

    # shift+drag sets window/level: the server renders the frame under the new centre/width
    start = driver.find_element(By.ID, "window-value").text  # type: ignore[attr-defined]
    ActionChains(driver).move_to_element(viewer).key_down(
        Keys.SHIFT
    ).click_and_hold().move_by_offset(60, 30).release().key_up(Keys.SHIFT).perform()
    wait.until(lambda d: d.find_element(By.ID, "window-value").text not in (start, ""))
    assert "/frames/" in viewer.get_attribute("data-shown") and "window=" in viewer.get_attribute(
        "data-shown"
    )
    driver.find_element(By.ID, "reset-view").click()  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_element(By.ID, "window-value").text == start)

    # a finding click from another slice: its key slice, its outline highlighted and shown
    js(
        "var s=document.getElementById('frame-slider');s.value='0';"
        "s.dispatchEvent(new Event('input'));"
    )
    assert driver.find_element(By.ID, "frame-number").text == "1"  # type: ignore[attr-defined]
    outline = driver.find_element(By.ID, "outline-1")  # type: ignore[attr-defined]
    assert not outline.is_displayed()
    driver.find_element(By.CSS_SELECTOR, "#finding-1 td:nth-child(2)").click()  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "frame-slider").get_attribute("value") == str(KEY_SLICE)  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "frame-number").text == str(KEY_SLICE + 1)  # type: ignore[attr-defined]
    assert outline.is_displayed() and "selected" in outline.get_attribute("class")
    assert "selected" in driver.find_element(By.ID, "finding-1").get_attribute("class")  # type: ignore[attr-defined]
    label = driver.find_element(By.ID, "finding-label-1")  # type: ignore[attr-defined]
    assert label.is_displayed() and label.text == "lesion-1"  # drawn on the image, not a tooltip
    wait.until(_frame_ready)

    # heat map: the loaded PNG has coloured, partly transparent pixels (read through a canvas) ...
    heat_alpha = (
        "var i=document.getElementById('heatmap-image');"
        "if(!i.complete||!i.naturalWidth){return -1;}"
        "var c=document.createElement('canvas');c.width=i.naturalWidth;c.height=i.naturalHeight;"
        "var g=c.getContext('2d');g.drawImage(i,0,0);"
        "var d=g.getImageData(0,0,c.width,c.height).data,n=0;"
        "for(var k=3;k<d.length;k+=4){if(d[k]>0){n++;}}return n;"
    )
    wait.until(lambda d: d.execute_script(heat_alpha) > 500)
    # ... and switching it on changes what is on screen (mask and labels off: only the heat map)
    driver.find_element(By.ID, "toggle-mask").click()  # type: ignore[attr-defined]
    driver.find_element(By.ID, "toggle-labels").click()  # type: ignore[attr-defined]
    before = _viewer_pixels(driver)
    assert not driver.find_element(By.ID, "heatmap-image").is_displayed()  # type: ignore[attr-defined]
    driver.find_element(By.ID, "toggle-heatmap").click()  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "heatmap-image").is_displayed()  # type: ignore[attr-defined]
    after = _viewer_pixels(driver)
    changed = np.abs(after - before).sum(axis=2) > 30

    def coloured(pixels: np.ndarray) -> int:  # the MR is grey; the highlighted outline is not
        return int((np.abs(pixels[..., 0] - pixels[..., 2]) > 40).sum())

    assert changed.sum() > 1000 and coloured(after) > coloured(before) + 1000
    _shot(driver, "review_heatmap")
    driver.find_element(By.ID, "toggle-heatmap").click()  # type: ignore[attr-defined]
    assert np.abs(_viewer_pixels(driver) - before).sum(axis=2).max() < 30

    # window presets: the server renders the frame again under the preset, shown as C/W
    driver.find_element(By.CSS_SELECTOR, '.wl-preset[data-window="lung"]').click()  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_element(By.ID, "window-value").text == "C -600 / W 1500")
    wait.until(_frame_ready)
    lung = _viewer_pixels(driver)
    driver.find_element(By.CSS_SELECTOR, '.wl-preset[data-window="auto"]').click()  # type: ignore[attr-defined]
    wait.until(lambda d: d.find_element(By.ID, "window-value").text != "C -600 / W 1500")
    wait.until(_frame_ready)
    assert np.abs(_viewer_pixels(driver) - lung).sum(axis=2).max() > 30
    assert LESION_SLICES[0] <= KEY_SLICE <= LESION_SLICES[-1]


def test_worklist_to_review_and_approve_with_the_keyboard(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, console, study = server
    driver = browser
    wait = WebDriverWait(driver, 30)
    _login(driver, base, "radiologist1")
    with console.db.write() as session:  # a newer study awaiting review: first in the list
        first = session.get(Job, study.job_id)
        assert first is not None
        newer = Job(
            study_pk=first.study_pk,
            pipeline_name="other",
            pipeline_version="1.0",
            destinations=[],
            state="succeeded",
            review_state="pending",
        )
        session.add(newer)
        session.flush()
        newer_id = newer.id
    driver.get(base + "/worklist?review=pending")  # type: ignore[attr-defined]
    row = f'tr[data-job="{study.job_id}"] a.button'
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row))).click()
    wait.until(_frame_ready)
    assert "review=pending" in driver.current_url  # type: ignore[attr-defined]
    # p / n: previous and next study in the worklist's order (newest first), filters kept
    body = driver.find_element(By.TAG_NAME, "body")  # type: ignore[attr-defined]
    body.send_keys("p")
    wait.until(lambda d: f"/review/{newer_id}?" in d.current_url)
    assert "review=pending" in driver.current_url  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "next-study")))
    driver.find_element(By.TAG_NAME, "body").send_keys("n")  # type: ignore[attr-defined]
    wait.until(lambda d: f"/review/{study.job_id}?" in d.current_url)
    wait.until(_frame_ready)
    driver.find_element(By.TAG_NAME, "body").send_keys("a")  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "review-state"), "approved"))
    # back on the review page with the worklist's filters, and the held delivery released
    assert f"/review/{study.job_id}?review=pending" in driver.current_url  # type: ignore[attr-defined]
    assert "Approved" in driver.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
    with console.db.read() as session:
        assert [d.state for d in session.query(Delivery).all()] == ["pending"]
    _shot(driver, "review_approved_by_keyboard")


def test_explanation_toggle_and_key_show_the_map_with_the_opacity_slider(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    """A result with an explanation: the toggle (and key e) put the map on screen, the opacity
    slider fades it, switching it off restores the frame."""
    from dataclasses import replace

    from node.results.store import load_result, save_result
    from tests.node.results.factories import explanation_for

    base, console, study = server
    directory = console.settings.job_results_dir(study.job_id)
    result = load_result(directory)
    assert result.segmentation is not None
    explained = replace(result, explanation=explanation_for(result.segmentation.label_map))
    save_result(explained, directory)
    before = _review_without_overlays(browser, base, study.job_id)  # only the map changes pixels
    _toggle_map_on(browser, "explanation")
    shown = _viewer_pixels(browser)
    assert (np.abs(shown - before).sum(axis=2) > 30).sum() > 1000
    _fade_and_key_off(browser, "explanation", "e", before)


def test_anomaly_map_toggle_and_key_show_the_map_with_the_opacity_slider(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    """A result with an anomaly map: the toggle (and key y) put it on screen where the map is
    above the threshold, the opacity slider fades it, switching it off restores the frame."""
    from dataclasses import replace

    from node.results.store import load_result, save_result
    from pipelines.contract import AnomalyOutput

    base, console, study = server
    directory = console.settings.job_results_dir(study.job_id)
    result = load_result(directory)
    assert result.segmentation is not None
    frames, rows, cols = result.segmentation.label_map.shape
    anomaly_map = np.full((frames, rows, cols), 2.0, np.float32)
    anomaly_map[KEY_SLICE, : rows // 3, : cols // 3] = 12.5  # above the threshold, top left
    anomaly = AnomalyOutput(12.5, 9.0, 95.0, (12.5,) * frames, map=anomaly_map)
    save_result(replace(result, anomaly=anomaly), directory)
    before = _review_without_overlays(browser, base, study.job_id)  # only the map changes pixels
    _toggle_map_on(browser, "anomaly")
    shown = _viewer_pixels(browser)
    changed = np.abs(shown - before).sum(axis=2) > 30
    h, w = changed.shape
    assert changed[: h // 3 - 4, : w // 3 - 4].mean() > 0.9  # the anomalous corner, reddened
    assert changed[h // 2 :, w // 2 :].mean() < 0.01  # the normal rest untouched
    top_left = (shown - before)[: h // 3 - 4, : w // 3 - 4]
    assert top_left[..., 0].mean() > top_left[..., 2].mean() + 20  # red, not blue
    _fade_and_key_off(browser, "anomaly", "y", before)


def test_denoised_switch_and_key_d_show_the_denoised_copy(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    """An enhancement job: the denoised switch (and key d) load the derived image in place of the
    original on the same slice; switching it off brings the original back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.web.routes.test_review_maps import add_denoised_copy

    base, console, study = server
    add_denoised_copy(console, study, KEY_SLICE)
    driver = browser
    wait = WebDriverWait(driver, 30)
    hide = ("toggle-mask", "toggle-labels", "toggle-boxes")  # the image alone
    before = _review_without_overlays(driver, base, study.job_id, hide)

    def shown(kind: str) -> object:
        return lambda d: (
            f"/{kind}/{KEY_SLICE}.png"
            in (d.find_element(By.ID, "viewer").get_attribute("data-shown") or "")
        )

    driver.find_element(By.ID, "toggle-denoised").click()  # type: ignore[attr-defined]
    wait.until(shown("denoised"))
    wait.until(_frame_ready)
    after = _viewer_pixels(driver)
    h, w = after.shape[:2]
    assert np.abs(after - before)[h // 4 : 3 * h // 4, w // 8 : w // 2 - 4].sum(axis=2).mean() > 5
    driver.find_element(By.TAG_NAME, "body").send_keys("d")  # type: ignore[attr-defined]
    wait.until(shown("frames"))
    wait.until(_frame_ready)
    assert np.abs(_viewer_pixels(driver) - before).max() < 30
