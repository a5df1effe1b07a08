"""The dashboard in a real browser: sign in, switch project, create a token and see its secret exactly once.

The live server is WSGI, so websockets cannot connect: the job page must degrade without breaking.
Database work happens outside the Playwright block, whose event loop Django's ORM refuses to run under.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from apps.core.models import ApiToken, Job, Role
from apps.core.tokens import token_display_prefix

from ..factories import MembershipFactory, UserFactory

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORD = "correct-horse-battery"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]


@pytest.fixture
def alice(transactional_db, project, other_project):
    user = UserFactory(username="alice")
    MembershipFactory(project=project, user=user, role=Role.VIEWER)
    MembershipFactory(project=other_project, user=user, role=Role.DEVELOPER)
    return user


def test_sign_in_switch_project_and_see_a_new_token_secret_once(live_server, alice, other_project):
    job = Job.objects.create(project=other_project, job_type="core.device_check", message="queued")
    js_errors: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: js_errors.append(str(error)))

            page.goto(f"{live_server.url}/login/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{live_server.url}/p/alpha/")
            expect(page.locator("h1")).to_have_text("Alpha")

            page.select_option("#project-switcher", "beta")
            page.wait_for_url(f"{live_server.url}/p/beta/")
            expect(page.locator("h1")).to_have_text("Beta")
            expect(page.locator(".badge-role").first).to_contain_text("Developer")

            page.click(".sidenav >> text=Tokens")
            page.wait_for_url(f"{live_server.url}/tokens/")
            expect(page.locator(".empty")).to_contain_text("No tokens yet")
            page.fill("#id_name", "ci-token")
            page.check("input[name=scopes][value=write]")
            page.select_option("#id_project", "beta")
            page.click("text=Create token")

            secret_box = page.locator("[data-secret]")
            expect(secret_box).to_be_visible()
            secret = secret_box.inner_text().strip()
            assert secret.startswith("cpt_")
            expect(page.locator("[data-one-time-secret]")).to_contain_text("will not be shown again")
            prefix = token_display_prefix(secret)

            # Reloading must not show the secret again, nor submit the form a second time.
            page.reload()
            assert secret not in page.content()
            expect(page.locator("table")).to_contain_text(prefix)
            page.goto(f"{live_server.url}/tokens/")
            assert secret not in page.content()
            expect(page.locator("table")).to_contain_text(prefix)
            expect(page.locator("#project-switcher")).to_have_value("beta")

            # Without a websocket server the job page keeps the rendered state and reports no live updates.
            page.goto(f"{live_server.url}/p/beta/jobs/{job.id}/")
            expect(page.locator("[data-live-status]")).not_to_have_attribute("data-state", "on")
            expect(page.locator("[data-field=status]")).to_have_text("Queued")
            page.goto(f"{live_server.url}/p/beta/jobs/")
            expect(page.locator(f'tr[data-job-id="{job.id}"]')).to_be_visible()
            page.wait_for_timeout(500)
        finally:
            browser.close()

    assert js_errors == []
    token = ApiToken.objects.get(user=alice)
    assert (token.name, token.key_prefix, token.scopes, token.project_id) == (
        "ci-token",
        prefix,
        ["read", "write"],
        other_project.id,
    )
