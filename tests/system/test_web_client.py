"""The web client in a real browser (Chromium, driven by Playwright), against the platform as
``make up`` runs it: people sign up, sell, buy, pay, in their own browser contexts.

Every page visited is checked as it is shown: axe-core finds no serious or critical
accessibility problem, the browser logs no error (a blocked inline script or a CSP violation
would be one), and a screenshot is saved under ``.artifacts/screenshots/``. Steps that wait for
an event to travel between services poll (reload until) with a timeout; nothing sleeps.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .local_platform import EVENTUAL, LocalPlatform, wait_until

playwright_api = pytest.importorskip("playwright.sync_api")
from axe_playwright_python.sync_playwright import Axe  # noqa: E402
from playwright.sync_api import (  # noqa: E402
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Response,
    expect,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).parents[2] / ".artifacts" / "screenshots"
# Short enough for the expiry test to wait it out, long enough to pay comfortably.
ORDER_EXPIRATION_SECONDS = 30
# Pages whose screenshots are also kept small (640px wide), as the README shows them.
README_PAGES = ("home", "ticket-buy", "order-payable", "order-complete", "my-listings", "home-nl")
XSS_TITLE = "<script>alert(1)</script><img src=x onerror=alert(2)>"

if not CHROMIUM.exists():
    reason = (
        f"browser tests skipped: no Chromium at {CHROMIUM} (install Debian's `chromium` "
        "package; .ci/run does)"
    )
    if os.environ.get("CI"):
        pytest.fail(reason.replace("skipped", "cannot run in CI"), pytrace=False)
    pytest.skip(reason, allow_module_level=True)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def platform_env() -> dict[str, str]:
    """A platform of its own: the screenshots show the site with these tests' tickets only."""
    return {"ORDER_EXPIRATION_SECONDS": str(ORDER_EXPIRATION_SECONDS)}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class Person:
    """Someone at their own browser (own cookies), looking at the site."""

    def __init__(
        self,
        browser: Browser,
        site: LocalPlatform,
        *,
        javascript: bool = True,
        locale: str = "en-GB",
        width: int = 1280,
    ) -> None:
        self.context: BrowserContext = browser.new_context(
            base_url=site.url,
            java_script_enabled=javascript,
            locale=locale,
            viewport={"width": width, "height": 900},
        )
        self.browser = browser
        self.page: Page = self.context.new_page()
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", self._console)
        self.page.on("response", self._response)
        self.email = f"web-{uuid.uuid4().hex[:10]}@example.com"

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        # A blocked script, a CSP violation, a script error. (A failed load is logged too: the
        # page's own error status is expected, a part of the page failing is caught below.)
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.console_errors.append(message.text)

    def _response(self, response: Response) -> None:
        if response.status >= 400 and response.request.resource_type != "document":
            self.console_errors.append(f"{response.url} answered {response.status}")

    def open(self, path: str, screenshot: str | None = None) -> Page:
        self.page.goto(path)
        if screenshot:
            self.check(screenshot)
        return self.page

    def check(self, name: str) -> None:
        """The page as shown: accessible, no browser errors, and a screenshot of it."""
        self.page.wait_for_load_state("load")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        if name in README_PAGES:
            self._save_small(shot, SCREENSHOTS / "small" / f"{name}.png")
        violations = [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
            for v in Axe().run(self.page).response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert violations == [], f"{name}: {violations}"
        assert self.console_errors == [], f"{name}: {self.console_errors}"

    def _save_small(self, png: bytes, path: Path, width: int = 640) -> None:
        """The screenshot scaled down by the browser itself (no image library needed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        small = self.browser.new_page(viewport={"width": width, "height": 100})
        try:
            data = base64.b64encode(png).decode()
            small.set_content(
                f'<body style="margin:0"><img style="width:{width}px;display:block" '
                f'src="data:image/png;base64,{data}"></body>'
            )
            small.screenshot(path=str(path), full_page=True)
        finally:
            small.close()

    def sign_up(self) -> Person:
        self.open("/auth/signup")
        self.page.get_by_label("Email").fill(self.email)
        self.page.get_by_label("Password").fill("correct horse battery")
        self.page.get_by_role("button", name="Sign up").click()
        expect(self.page.get_by_text(f"Signed in as {self.email}")).to_be_visible()
        return self

    def sell(self, title: str, price: str) -> str:
        self.open("/tickets/new")
        self.page.get_by_label("Title").fill(title)
        self.page.get_by_label("Price (USD)").fill(price)
        self.page.get_by_role("button", name="List for sale").click()
        expect(self.page.get_by_role("heading", level=1)).to_have_text(title)
        return self.page.url

    def buy(self, ticket_url: str) -> str:
        self.open(ticket_url)
        self.page.get_by_role("button", name="Buy").click()
        expect(self.page.get_by_text("Time left to pay:")).to_be_visible()
        return self.page.url

    def pay(self, card: str) -> None:
        self.page.get_by_label(card).check()
        self.page.get_by_role("button", name=re.compile(r"^Pay ")).click()

    def reload_until(self, text: str, *, row: str | None = None, timeout: float = EVENTUAL) -> None:
        """Look again (as a patient person would) until ``text`` shows: in the table row named
        ``row`` if given (the text may also be on the page elsewhere, in the menu say)."""
        deadline_ms = timeout * 1000
        waited = 0
        while not self._where(row).get_by_text(text).count():
            if waited > deadline_ms:
                raise AssertionError(f"{text!r} not shown on {self.page.url} within {timeout}s")
            self.page.wait_for_timeout(500)  # a person's pause before reloading
            waited += 500
            self.page.reload()

    def _where(self, row: str | None) -> Page | Locator:
        if row is None:
            return self.page
        return self.page.get_by_role("row", name=re.compile(re.escape(row)))

    def close(self) -> None:
        self.context.close()


class People:
    """Makes people, each at their own browser context; closes them after the test."""

    def __init__(self, browser: Browser, site: LocalPlatform) -> None:
        self.browser = browser
        self.site = site
        self.made: list[Person] = []

    def new(self, *, javascript: bool = True, locale: str = "en-GB", width: int = 1280) -> Person:
        self.made.append(
            Person(self.browser, self.site, javascript=javascript, locale=locale, width=width)
        )
        return self.made[-1]


@pytest.fixture
def people(browser: Browser, platform: LocalPlatform) -> Iterator[People]:
    made = People(browser, platform)
    yield made
    for one in made.made:
        one.close()


def test_a_ticket_is_listed_bought_paid_and_shown_sold(people: People) -> None:
    seller = people.new().sign_up()
    seller.check("signed-in-home")
    ticket_url = seller.sell("Concert in the park", "20.50")
    seller.check("ticket-own")
    expect(seller.page.get_by_text("$20.50")).to_be_visible()

    buyer = people.new().sign_up()
    buyer.open(ticket_url, "ticket-buy")
    order_url = buyer.buy(ticket_url)
    buyer.check("order-payable")
    # The countdown is live: the time shown changes without a reload.
    countdown = buyer.page.locator("#countdown")
    shown = countdown.inner_text()
    expect(countdown).not_to_have_text(shown, timeout=5000)

    buyer.pay("Visa ending in 4242 (pays)")
    expect(buyer.page.get_by_text("Paid. The ticket is yours.")).to_be_visible(
        timeout=EVENTUAL * 1000
    )
    buyer.check("order-complete")
    buyer.open("/orders", "orders")
    row = buyer.page.get_by_role("row", name=re.compile("Concert in the park"))
    expect(row).to_contain_text("Paid")
    link = row.get_by_role("link", name="Concert in the park").get_attribute("href")
    assert link is not None and order_url.endswith(link)

    for title, price in (("Jazz at the pier", "35"), ("Comedy night", "18"), ("Symphony", "62.5")):
        seller.sell(title, price)
    stranger = people.new()
    stranger.open("/", "home")
    # Someone who never signed in is nobody else either (no session kept along the way).
    expect(stranger.page.get_by_role("link", name="Sign in")).to_be_visible()
    expect(stranger.page.get_by_text("Signed in as")).to_have_count(0)
    expect(stranger.page.get_by_role("link", name="Symphony")).to_be_visible()
    expect(stranger.page.get_by_role("link", name="Concert in the park")).to_have_count(0)
    stranger.open(ticket_url)
    expect(stranger.page.get_by_text("Someone has already reserved this ticket.")).to_be_visible()
    # Another member who knows the order's address still cannot see it, nor edit the ticket.
    snoop = people.new().sign_up()
    for path in (order_url, f"{ticket_url}/edit"):
        snoop.open(path)
        expect(snoop.page.get_by_role("heading", level=1)).to_have_text("Not yours")
    expect(snoop.page.get_by_text("Concert in the park")).to_have_count(0)

    seller.open("/tickets/mine")
    seller.reload_until("Sold")
    seller.check("my-listings")
    row = seller.page.get_by_role("row", name=re.compile("Concert in the park"))
    expect(row).to_contain_text("Sold")


def test_a_declined_card_is_said_and_another_can_be_tried(people: People) -> None:
    seller = people.new().sign_up()
    ticket_url = seller.sell("Opera night", "75")
    buyer = people.new().sign_up()
    buyer.buy(ticket_url)

    buyer.pay("Card ending in 0002 (declined)")
    expect(buyer.page.get_by_role("alert")).to_contain_text("declined")
    buyer.check("order-declined")
    buyer.pay("Visa ending in 4242 (pays)")
    expect(buyer.page.get_by_text("Paid. The ticket is yours.")).to_be_visible(
        timeout=EVENTUAL * 1000
    )


def test_an_unpaid_order_expires_and_says_so(people: People) -> None:
    seller = people.new().sign_up()
    ticket_url = seller.sell("Late show", "12")
    buyer = people.new().sign_up()
    buyer.buy(ticket_url)
    # The countdown reloads the page at zero; the order is cancelled by its timer (an event).
    expect(buyer.page.get_by_text("This order expired before it was paid.")).to_be_visible(
        timeout=(ORDER_EXPIRATION_SECONDS + EVENTUAL) * 1000
    )
    buyer.check("order-expired")
    expect(buyer.page.get_by_role("button", name=re.compile(r"^Pay "))).to_have_count(0)
    # The ticket is for sale again: the seller sees it so.
    seller.open("/tickets/mine")
    seller.reload_until("For sale", row="Late show")  # the menu says "For sale" too


def test_the_whole_purchase_works_without_javascript(people: People) -> None:
    seller = people.new(javascript=False).sign_up()
    ticket_url = seller.sell("Quiet recital", "15.25")
    buyer = people.new(javascript=False).sign_up()
    order_url = buyer.buy(ticket_url)
    buyer.pay("Visa ending in 4242 (pays)")
    assert buyer.page.url.startswith(order_url)
    buyer.reload_until("Paid. The ticket is yours.")
    seller.open("/tickets/mine")
    seller.reload_until("Sold")


def test_a_script_in_a_title_is_shown_as_text(people: People) -> None:
    seller = people.new().sign_up()
    ticket_url = seller.sell(XSS_TITLE, "5")
    visitor = people.new()
    for path in (ticket_url, "/"):
        visitor.open(path)
        expect(visitor.page.get_by_text(XSS_TITLE).first).to_be_visible()
        assert visitor.page.locator("img[src=x]").count() == 0
    visitor.check("xss-title")
    assert visitor.dialogs == [] and seller.dialogs == []


def test_a_form_without_its_csrf_token_or_from_another_site_is_refused(people: People) -> None:
    seller = people.new().sign_up()
    seller.open("/tickets/new")
    token = seller.page.locator("#main input[name=csrf_token]").get_attribute("value")
    assert token
    attempts: dict[str, tuple[dict[str, str | float | bool], dict[str, str]]] = {
        "no token": ({"title": "Forged", "price": "1"}, {}),
        "wrong token": ({"title": "Forged", "price": "1", "csrf_token": "0" * 64}, {}),
        "another site": (
            {"title": "Forged", "price": "1", "csrf_token": token},
            {"Origin": "https://evil.example"},
        ),
    }
    for attempt, (form, headers) in attempts.items():
        response = seller.context.request.post(
            "/tickets/new", form=form, headers=headers, max_redirects=0
        )
        assert response.status == 403, attempt
        assert "This form has expired" in response.text(), attempt
    seller.open("/tickets/mine")
    expect(seller.page.get_by_text("Forged")).to_have_count(0)
    # A token from one person's session does not work for another's.
    other = people.new().sign_up()
    response = other.context.request.post(
        "/tickets/new", form={"title": "Forged", "price": "1", "csrf_token": token}
    )
    assert response.status == 403


def test_errors_show_next_to_their_fields_with_the_input_kept(people: People) -> None:
    seller = people.new().sign_up()
    seller.open("/tickets/new")
    seller.page.get_by_label("Title").fill("Gig")
    seller.page.get_by_label("Price (USD)").fill("-3")
    seller.page.get_by_role("button", name="List for sale").click()
    expect(seller.page.get_by_label("Price (USD)")).to_have_attribute("aria-invalid", "true")
    expect(seller.page.locator("#price-error")).not_to_be_empty()
    expect(seller.page.get_by_label("Title")).to_have_value("Gig")
    seller.check("sell-error")

    stranger = people.new()
    stranger.open("/auth/signin")
    stranger.page.get_by_label("Email").fill("nobody@example.com")
    stranger.page.get_by_label("Password").fill("wrong password")
    stranger.page.get_by_role("button", name="Sign in").click()
    expect(stranger.page.get_by_role("alert")).to_contain_text("Invalid credentials")
    expect(stranger.page.get_by_label("Email")).to_have_value("nobody@example.com")
    stranger.check("signin-error")


def test_a_reserved_ticket_cannot_be_edited_and_says_why(people: People) -> None:
    seller = people.new().sign_up()
    ticket_url = seller.sell("Derby", "40")
    seller.open(f"{ticket_url}/edit", "edit-ticket")
    buyer = people.new().sign_up()
    buyer.buy(ticket_url)
    seller.reload_until("reserved by a buyer")
    seller.page.get_by_label("Price (USD)").fill("45")
    seller.page.get_by_role("button", name="Save changes").click()
    expect(seller.page.get_by_role("alert")).to_be_visible()
    seller.check("edit-reserved")
    seller.open(ticket_url)
    expect(seller.page.get_by_text("$40.00")).to_be_visible()


def test_dutch_pages_and_the_language_switch(people: People) -> None:
    seller = people.new().sign_up()
    seller.sell("Kermis", "1234.5")
    visitor = people.new(locale="nl-NL")
    visitor.open("/", "home-nl")
    expect(visitor.page.locator("html")).to_have_attribute("lang", "nl")
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("Tickets te koop")
    expect(visitor.page.get_by_text(re.compile(r"US\$\s1\.234,50")).first).to_be_visible()
    visitor.open("/auth/signup", "signup-nl")
    expect(visitor.page.get_by_label("Wachtwoord")).to_be_visible()

    visitor.page.get_by_role("link", name="English").click()
    expect(visitor.page.locator("html")).to_have_attribute("lang", "en")
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("Sign up")
    visitor.open("/")  # remembered, whatever the browser asks for
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("Tickets for sale")


def test_every_other_page_is_accessible_and_fits_a_phone(people: People) -> None:
    visitor, member = people.new(), people.new().sign_up()
    for person, path, name in (
        (visitor, "/auth/signup", "signup"),
        (visitor, "/auth/signin", "signin"),
        (visitor, "/tickets/not-an-id", "not-found-bad-id"),
        (visitor, "/no/such/page", "not-found"),
        (member, "/auth/signout", "signout"),
        (member, "/tickets/new", "sell"),
        (member, "/orders", "orders-empty"),
        (member, "/tickets/mine", "my-listings-empty"),
    ):
        person.open(path, name)
    expect(visitor.page.get_by_role("heading", level=1)).to_have_text("Page not found")

    # Signing out (the confirm page's button) and in again, through the forms.
    member.open("/auth/signout")
    member.page.locator("#main").get_by_role("button", name="Sign out").click()
    expect(member.page.get_by_role("link", name="Sign in")).to_be_visible()
    member.open("/orders")
    expect(member.page.get_by_role("heading", level=1)).to_have_text("Sign in")
    member.page.get_by_label("Email").fill(member.email)
    member.page.get_by_label("Password").fill("correct horse battery")
    member.page.get_by_role("button", name="Sign in").click()
    expect(member.page.get_by_role("heading", level=1)).to_have_text("My orders")
    expect(member.page.get_by_text(f"Signed in as {member.email}")).to_be_visible()

    phone = people.new(width=375).sign_up()
    for path, name in (("/", "phone-home"), ("/tickets/new", "phone-sell")):
        phone.open(path, name)
        width = phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide on a 375px screen"


HIDDEN_INPUT = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


class FormBrowser:
    """A browser without JavaScript, over plain HTTP: fetches a page, posts its form."""

    def __init__(self, site: LocalPlatform) -> None:
        self.http = httpx.Client(
            base_url=site.url, timeout=60, trust_env=False, follow_redirects=True
        )

    def submit(self, page: str, action: str, **fields: str) -> httpx.Response:
        shown = self.http.get(page)
        assert shown.status_code == 200, shown.text
        hidden = dict(HIDDEN_INPUT.findall(shown.text))
        return self.http.post(action, data=hidden | fields)


def test_many_buyers_racing_through_the_client_make_one_order(platform: LocalPlatform) -> None:
    seller = FormBrowser(platform)
    email = f"seller-{uuid.uuid4().hex[:8]}@example.com"
    seller.submit("/auth/signup", "/auth/signup", email=email, password="correct horse battery")
    listed = seller.submit("/tickets/new", "/tickets/new", title="Final", price="99")
    assert listed.url.path.startswith("/tickets/"), listed.text
    ticket_path = listed.url.path

    buyers = [FormBrowser(platform) for _ in range(10)]
    for buyer in buyers:
        signed_up = buyer.submit(
            "/auth/signup",
            "/auth/signup",
            email=f"racer-{uuid.uuid4().hex[:8]}@example.com",
            password="correct horse battery",
        )
        assert "Signed in as" in signed_up.text
    # Each has the ticket's page (and its form) open; all press Buy at once.
    pages = [dict(HIDDEN_INPUT.findall(b.http.get(ticket_path).text)) for b in buyers]
    start = threading.Barrier(len(buyers))
    answers: list[httpx.Response | None] = [None] * len(buyers)

    def press_buy(index: int) -> None:
        start.wait()
        answers[index] = buyers[index].http.post(f"{ticket_path}/buy", data=pages[index])

    threads = [threading.Thread(target=press_buy, args=(i,)) for i in range(len(buyers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    won = [a for a in answers if a is not None and a.url.path.startswith("/orders/")]
    lost = [a for a in answers if a is not None and a.status_code == 400]
    assert len(won) == 1, [(a.status_code, a.url) for a in answers if a]
    assert len(lost) == len(buyers) - 1
    assert all("Ticket is already reserved" in a.text for a in lost)
    # Each buyer's orders page shows their own orders only: one order in all.
    listed_orders = [b.http.get("/orders").text.count('href="/orders/') for b in buyers]
    assert sorted(listed_orders) == [0] * (len(buyers) - 1) + [1]
    for browser in (seller, *buyers):
        browser.http.close()


def test_the_tickets_for_sale_come_newest_first_a_page_at_a_time(platform: LocalPlatform) -> None:
    seller = FormBrowser(platform)
    email = f"seller-{uuid.uuid4().hex[:8]}@example.com"
    seller.submit("/auth/signup", "/auth/signup", email=email, password="correct horse battery")
    batch = uuid.uuid4().hex[:6]
    titles = [f"Batch {batch} no. {n}" for n in range(1, 22)]  # one more than a page
    for title in titles:
        assert seller.submit("/tickets/new", "/tickets/new", title=title, price="10").is_success

    first = seller.http.get("/")
    shown = re.findall(rf"Batch {batch} no\. \d+", first.text)
    assert shown == titles[:0:-1]  # the 20 newest, newest first
    more = re.search(r'<a href="(/\?cursor=[^"]+)" rel="next">', first.text)
    assert more, "no link to the next page"
    second = seller.http.get(more.group(1).replace("&amp;", "&"))
    assert re.findall(rf"Batch {batch} no\. \d+", second.text)[:1] == [titles[0]]
    assert 'href="/">Back to the newest</a>' in second.text
    seller.http.close()


def test_one_request_id_follows_a_page_to_the_services_it_calls(platform: LocalPlatform) -> None:
    browser = FormBrowser(platform)
    page = browser.http.get("/auth/signup")
    hidden = dict(HIDDEN_INPUT.findall(page.text))
    email = f"traced-{uuid.uuid4().hex[:8]}@example.com"
    answer = browser.http.post(
        "/auth/signup",
        data=hidden | {"email": email, "password": "correct horse battery"},
        follow_redirects=False,
    )
    # The edge makes the id (one a client sends is never trusted) and the page answers with it.
    request_id = answer.headers["x-request-id"]
    assert answer.status_code == 303 and uuid.UUID(request_id)
    browser.http.close()

    def logged_by(service: str) -> bool:
        return any(
            line.startswith(service) and f"[{request_id[:8]}]" in line
            for line in platform.output().splitlines()
        )

    assert wait_until(lambda: logged_by("client") and logged_by("auth"), 10, "the log lines")
