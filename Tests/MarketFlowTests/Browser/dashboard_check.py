"""Checks the market dashboard in a real browser (headless Chromium through selenium).

Usage: dashboard_check.py BASE_URL SCREENSHOT_PATH
       dashboard_check.py --screenshot BASE_URL SCREENSHOT_PATH   (only the picture, for the README)

Phases, each announced on stdout so that the Swift test can act between them:
  CHECKED  the page shows the same offers, task counts and books status as /v1/stats, and the
           page with scripts disabled still shows the book and the charts
  UPDATED  a job submitted meanwhile shows up without a reload (the settled count grows)
  LOST     after the market stops, the page says it lost the connection
  RECOVERED  after the market is back, the page is live again, still without a reload
"""
import json
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

only_screenshot = sys.argv[1] == "--screenshot"
base, screenshot = sys.argv[-2], sys.argv[-1]


def say(text):
    print(text, flush=True)


def browser(scripts=True):
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,1500", "--proxy-server=direct://", "--proxy-bypass-list=*"]:
        options.add_argument(argument)
    if not scripts:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def stats():
    with urllib.request.urlopen(base + "/v1/stats", timeout=10) as response:
        return json.load(response)


def text(driver, element_id):
    # The live updates replace the content: an element found a moment ago may be gone, so it is
    # looked up again (the page, not the check, decides when its content changes).
    for _ in range(20):
        try:
            return driver.find_element(By.ID, element_id).text.strip()
        except StaleElementReferenceException:
            time.sleep(0.05)
    return driver.find_element(By.ID, element_id).text.strip()


def wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if condition():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out waiting for " + what)


if only_screenshot:
    driver = browser()
    try:
        driver.get(base + "/")
        wait_for(lambda: driver.find_element(By.ID, "live").get_attribute("data-state") == "live", 15,
                 "live updates")
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1100, max(900, height + 120))
        time.sleep(0.5)
        driver.save_screenshot(screenshot)
        say("SAVED " + screenshot)
    finally:
        driver.quit()
    sys.exit(0)

# Without scripts: the book and the charts are there, rendered by the server.
static = browser(scripts=False)
try:
    static.get(base + "/")
    assert static.find_elements(By.CSS_SELECTOR, "#offers tbody tr"), "no offers table without scripts"
    assert static.find_elements(By.CSS_SELECTOR, "#flow svg.chart"), "no chart without scripts"
    assert static.find_element(By.ID, "live").get_attribute("data-state") == "static"
finally:
    static.quit()

driver = browser()
try:
    driver.get(base + "/")
    wait_for(lambda: driver.find_element(By.ID, "live").get_attribute("data-state") == "live", 15, "live updates")
    server = stats()
    assert text(driver, "offers-count") == str(server["offers"]), (text(driver, "offers-count"), server["offers"])
    for state, count in server["tasks"].items():
        assert text(driver, "tasks-" + state) == str(count), (state, text(driver, "tasks-" + state), count)
    balanced = driver.find_element(By.ID, "books-status").get_attribute("data-balanced")
    assert balanced == ("true" if server["ledgerBalanced"] else "false"), balanced
    shown_offers = len(driver.find_elements(By.CSS_SELECTOR, "#offers tbody tr[data-provider]"))
    assert shown_offers == server["offers"], (shown_offers, server["offers"])
    settled_before = int(text(driver, "tasks-settled"))
    say("CHECKED")

    # The Swift test submits one more job now; the page changes by itself.
    marker = driver.find_element(By.ID, "content")
    driver.execute_script("document.body.dataset.loadedOnce = 'yes'")
    wait_for(lambda: int(text(driver, "tasks-settled")) > settled_before, 60, "the settled count to grow")
    assert driver.execute_script("return document.body.dataset.loadedOnce") == "yes", "the page was reloaded"
    assert text(driver, "tasks-settled") == str(stats()["tasks"]["settled"])
    driver.save_screenshot(screenshot)
    say("UPDATED")

    # The Swift test stops the market now.
    wait_for(lambda: driver.find_element(By.ID, "live").get_attribute("data-state") == "lost", 30,
             "the page to say it lost the connection")
    say("LOST")

    # The Swift test starts the market again on the same port: the page comes back by itself.
    wait_for(lambda: driver.find_element(By.ID, "live").get_attribute("data-state") == "live", 60,
             "the page to reconnect")
    assert driver.execute_script("return document.body.dataset.loadedOnce") == "yes", "the page was reloaded"
    say("RECOVERED")
finally:
    driver.quit()
