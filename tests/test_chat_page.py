"""The embedded server's chat page: served at / (opt-out), self-contained, and working in a real
browser (headless Chromium from the system's chromium and chromium-driver packages, driven by
Selenium): a question streams an answer with its stats, Stop cancels one mid-answer and frees the
server's slot."""

from __future__ import annotations

import re
import shutil
import time

import pytest
import requests

from cyllama.server.embedded import EmbeddedServer


@pytest.fixture(scope="module")
def server(model_path):
    with EmbeddedServer(model_path, port=0, n_ctx=4096, n_parallel=2, n_threads=2) as s:
        yield s


def test_page_is_served_and_self_contained(server):
    r = requests.get(server.base_url + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "/v1/chat/completions" in html and 'id="stop"' in html
    # nothing is fetched from elsewhere: no external scripts, styles, fonts or images
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_props_describe_the_model(server):
    p = requests.get(server.base_url + "/props", timeout=30).json()
    assert p["model"] == server.service.model_id
    assert p["n_ctx"] == server.service.engine.n_ctx_slot > 0
    assert p["total_slots"] == 2 and p["slots_busy"] == 0


def test_page_opt_out_and_api_key(model_path):
    with EmbeddedServer(model_path, port=0, n_ctx=256, n_parallel=1, api_key="k3y", chat_page=False) as s:
        assert requests.get(s.base_url + "/", timeout=30).status_code == 404
    with EmbeddedServer(model_path, port=0, n_ctx=256, n_parallel=1, api_key="k3y") as s:
        assert requests.get(s.base_url + "/", timeout=30).status_code == 200  # the page asks for the key
        assert requests.get(s.base_url + "/props", timeout=30).status_code == 401
        ok = requests.get(s.base_url + "/props", headers={"Authorization": "Bearer k3y"}, timeout=30)
        assert ok.status_code == 200


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver (the system packages chromium and chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_chat_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By

    browser = _browser()
    try:
        browser.get(server.base_url + "/")
        _wait(lambda: server.service.model_id in browser.find_element(By.ID, "model").text, 30, "the model name")
        assert "context" in browser.find_element(By.ID, "model").text

        def answers():
            return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")

        def setting(name: str, value: str) -> None:
            el = browser.find_element(By.ID, name)
            el.clear()
            el.send_keys(value)

        # a question: tokens stream in, then the stats line
        setting("max_tokens", "40")
        box = browser.find_element(By.ID, "input")
        box.send_keys("What is the capital of France?")
        browser.find_element(By.ID, "send").click()
        first = _wait(lambda: answers(), 30, "the answer bubble")[0]
        _wait(lambda: first.get_attribute("data-done") == "1", 120, "the answer to finish")
        assert first.find_element(By.CSS_SELECTOR, ".text").text.strip()
        stats = first.find_element(By.CSS_SELECTOR, ".stats").text
        assert re.search(r"[\d.]+ tok/s · first token \d+ ms · \d+ tokens", stats), stats

        # Stop mid-answer: the request is dropped and the server frees the slot
        setting("max_tokens", "1000")
        setting("temperature", "1.0")
        stopped, seen = False, []
        for attempt in range(3):
            n_before = len(answers())
            box.send_keys("Write a very long story about a dragon who learns to count to one thousand.")
            browser.find_element(By.ID, "send").click()
            bubble = _wait(lambda: len(answers()) > n_before and answers()[-1], 30, "a new answer")
            _wait(lambda: bubble.find_element(By.CSS_SELECTOR, ".text").text.strip()
                  or bubble.get_attribute("data-done"), 120, "the first tokens")
            browser.find_element(By.ID, "stop").click()
            _wait(lambda: bubble.get_attribute("data-done") == "1", 30, "the stopped answer")
            if bubble.get_attribute("data-stopped") == "1":
                stopped = True
                break
            seen.append(bubble.find_element(By.CSS_SELECTOR, ".stats").text)
        assert stopped, f"every answer finished before Stop could be clicked: {seen}"
        assert "stopped after" in bubble.find_element(By.CSS_SELECTOR, ".stats").text
        _wait(lambda: requests.get(server.base_url + "/health", timeout=10).json()["slots_busy"] == 0, 15,
              "the server to free the cancelled request's slot")

        # the conversation stays in the page across a reload
        n = len(browser.find_elements(By.CSS_SELECTOR, ".msg"))
        browser.refresh()
        _wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".msg")) == n, 10, "the restored conversation")

        shot = tmp_path / "chat.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5000
    finally:
        browser.quit()
