"""The Settings -> API keys page in headless Chromium: create a key, copy
its secret from the modal once, use it with the API, see "Last used",
replace it, revoke the old key behind the confirm dialog, and the API
answers 401; the secret is in the page only while its modal is open."""
import os
import tempfile
import unittest

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from . import harness
from .harness import ADAM, OLIVIA, App, org_of

app = None
browser = None


def setUpModule():
    global app, browser
    app = App(**harness.BEHIND_PROXY)
    unittest.addModuleCleanup(app.stop)   # also if what follows fails
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,600"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    unittest.addModuleCleanup(browser.quit)


class PageTest(unittest.TestCase):

    def wait(self, what, probe):
        """Poll the page (generously: the machine may be busy); an element
        read while the list was being redrawn is read again."""
        return WebDriverWait(browser, 120, poll_frequency=0.2,
                             ignored_exceptions=[StaleElementReferenceException]).until(
            lambda _: probe(), message=f"no {what}")

    def click(self, element_id):
        element = browser.find_element(By.ID, element_id)
        self.wait(f"#{element_id} shown", element.is_displayed)
        element.click()

    def dialog_open(self, dialog_id):
        return browser.execute_script(f"return document.getElementById('{dialog_id}').open")

    def row(self, prefix):
        """A snapshot of the list's row of the key with this prefix: its
        cells' texts by class, its class, label colour and buttons; or
        None.  (Snapshots, not elements: a refresh redraws the list.)"""
        for tr in browser.find_elements(By.CSS_SELECTOR, "#key-table tbody tr"):
            if tr.find_element(By.CSS_SELECTOR, "td.prefix").text == prefix:
                row = {td.get_attribute("class").split()[0]: td.text
                       for td in tr.find_elements(By.TAG_NAME, "td")}
                label = tr.find_element(By.CSS_SELECTOR, "td.label")
                row.update({"class": tr.get_attribute("class"),
                            "label-colour": label.value_of_css_property("color"),
                            "buttons": [b.text for b in tr.find_elements(By.TAG_NAME, "button")]})
                return row
        return None

    def press(self, prefix, button):
        """Click a button of the key's row (again if the list was redrawn)."""
        def pressed():
            tr = browser.find_element(By.XPATH, f"//td[@class='prefix mono'][text()='{prefix}']/..")
            tr.find_element(By.XPATH, f".//button[text()='{button}']").click()
            return True
        self.wait(f"{button} of {prefix}", pressed)

    def take_secret(self, escape=False):
        """Read the secret from its modal, copy it, close the modal (Done,
        or the Escape key); check that the page keeps it nowhere then."""
        secret = self.wait("secret in the modal", lambda: self.dialog_open("secret-dialog")
                           and browser.find_element(By.ID, "secret").text)
        self.assertRegex(secret, harness.TOKEN)
        warning = browser.find_element(By.CSS_SELECTOR, "#secret-dialog .warning").text
        self.assertIn("The secret is shown only once.", warning)
        self.click("copy")
        self.wait("Copied", lambda: browser.find_element(By.ID, "copy").text == "Copied")
        if escape:
            # the dialog closes, then its "close" event empties it
            browser.find_element(By.ID, "secret-dialog").send_keys(Keys.ESCAPE)
            self.wait("closed, emptied modal", lambda: not self.dialog_open("secret-dialog")
                      and not browser.find_element(By.ID, "secret").get_attribute("textContent"))
        else:
            # Done empties it before it closes
            self.click("secret-done")
            self.wait("closed modal", lambda: not self.dialog_open("secret-dialog"))
        self.assert_secret_gone(secret)
        return secret

    def assert_secret_gone(self, secret):
        body = secret[18:]   # the prefix is shown in the list, on purpose
        self.assertNotIn(body, browser.page_source)
        self.assertFalse(browser.execute_script("""
            const s = arguments[0];
            return document.documentElement.outerHTML.includes(s)
                || document.documentElement.textContent.includes(s)
                || String(window.getSelection()).includes(s)
                || Array.from(document.querySelectorAll('input, select, textarea'))
                        .some((e) => e.value.includes(s));""", body))

    def confirm(self, text_part, grace):
        """Confirm the open dialog, which offers a grace period or not."""
        self.wait("confirm dialog", lambda: self.dialog_open("confirm-dialog"))
        self.assertIn(text_part, browser.find_element(By.ID, "confirm-text").text)
        self.assertEqual(browser.find_element(By.ID, "grace-row").is_displayed(), grace)
        self.click("confirm-ok")
        self.wait("closed confirm dialog", lambda: not self.dialog_open("confirm-dialog"))

    def last_used(self, prefix):
        """Refresh the list until the key's "Last used" shows a time."""
        def used():
            self.click("refresh")
            row = self.row(prefix)
            return row and row["last-used"] != "Never"
        self.wait(f"Last used of {prefix}", used)

    def test_create_use_see_last_used_replace_revoke(self):
        # Adam's key for Postman, made and used without the page
        postman = app.request("POST", f"/settings/orgs/{org_of(app, ADAM)}/keys",
                              {"label": "Postman", "scopes": ["messages:read"]}, user=ADAM).json
        self.assertEqual(app.api("GET", "/v1/messages", postman["token"]).status, 200)

        browser.get(f"{app.url}/stub/sign-in?user={OLIVIA}")
        self.wait("the list", lambda: browser.find_element(By.ID, "keys").is_displayed())

        # create: label and one scope
        self.click("create")
        browser.find_element(By.ID, "create-label").send_keys("n8n production")
        browser.find_element(By.CSS_SELECTOR, "#create-scopes input[value='messages:send']").click()
        self.click("create-submit")
        secret = self.take_secret()
        row = self.wait("the new row", lambda: self.row(secret[:18]))
        self.assertEqual((row["label"], row["scope"], row["last-used"], row["status"]),
                         ("n8n production", "messages:send", "Never", "active"))
        self.assertIn("by Olivia (owner)", row["created"])

        # use it (from 203.0.113.7, as the app's proxy tells it); "Last
        # used" appears once the usage flush has written it
        self.assertEqual(app.api("POST", "/v1/messages", secret, body={"text": "hi"},
                                 headers={"X-Forwarded-For": "203.0.113.7"}).status, 200)
        self.last_used(secret[:18])

        # the usage view shows that request (asked again until flushed)
        self.press(secret[:18], "Usage")

        def usage():
            self.click("usage-show")
            return [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "#usage-rows tbody tr")]
        self.assertEqual(self.wait("usage", usage)[0].split()[-4:],
                         ["203.0.113.7", "messages:send", "VALID", "1"])
        browser.find_element(By.CSS_SELECTOR, "#usage-dialog button[value=close]").click()

        # replace: a new secret, once; the old key keeps working until revoked
        self.press(secret[:18], "Replace")
        self.confirm("same label, scopes and policy", grace=True)
        new_secret = self.take_secret(escape=True)
        self.assertEqual(app.api("POST", "/v1/messages", secret, body={}).status, 200)

        # revoke the old key, confirmed: greyed with its timestamp; the API says 401
        self.press(secret[:18], "Revoke")
        self.confirm("returns 401", grace=False)

        def revoked_row():
            row = self.row(secret[:18])
            return row if row and row["class"] == "revoked" else None
        revoked = self.wait("the revoked row", revoked_row)
        self.assertRegex(revoked["status"], r"^revoked\nRevoked \S")
        self.assertEqual(revoked["buttons"], ["Usage"])
        active = self.wait("the new key's row", lambda: self.row(new_secret[:18]))
        self.assertNotEqual(revoked["label-colour"], active["label-colour"])   # greyed
        refused = app.api("POST", "/v1/messages", secret, body={})
        self.assertEqual((refused.status, refused.json["error"]), (401, "REVOKED"))
        self.assertEqual(app.api("POST", "/v1/messages", new_secret, body={}).status, 200)
        self.last_used(new_secret[:18])

        for s in (secret, new_secret, postman["token"]):
            self.assert_secret_gone(s)
            self.assertNotIn(s[18:], app.log())
        shot = os.environ.get("SCREENSHOT") or os.path.join(tempfile.gettempdir(),
                                                            "flowella_example.png")
        browser.save_screenshot(shot)


if __name__ == "__main__":
    unittest.main()
