import datetime
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail
from django.utils import timezone

from apps.accounting import budgets
from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import BudgetPeriod, BudgetScope
from apps.core.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook():
    """A local HTTP receiver; the first `fail_first` posts get a 500."""
    received, state = [], {"fail_first": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if state["fail_first"] > 0:
                state["fail_first"] -= 1
                self.send_response(500)
            else:
                received.append(body)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received, state
    server.shutdown()


def _spend(user, project, n, start=0):
    # gpt-4o at the test catalog's prices: 1000 in × 2 + 100 out × 10 per million = 0.003 per event
    now = timezone.now().isoformat()
    events = [{"id": f"s-{i}", "time": now, "model": "gpt-4o", "provider": "openai", "prompt_tokens": 1000,
               "completion_tokens": 100, "user": user.username} for i in range(start, start + n)]  # fmt: skip
    usage_ingest(user=user, events=events, project=project.slug)


def test_thresholds_alert_once_per_period_by_mail_and_webhook(settings, catalog, project, admin_user, webhook):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    url, received, state = webhook
    budget = budgets.budget_create(
        user=admin_user, project=project, fields={"name": "monthly", "amount": Decimal("0.03"),
        "period": BudgetPeriod.MONTHLY, "thresholds": [80, 50], "alert_emails": ["ops@example.com"],
        "webhook_url": url},
    )  # fmt: skip
    assert AuditEvent.objects.filter(action="accounting.budget.create", object_id=str(budget.pk)).exists()
    _spend(admin_user, project, 4)  # 0.012 = 40 %
    assert budgets.budgets_evaluate() == 0 and mail.outbox == []

    state["fail_first"] = 1
    _spend(admin_user, project, 2, start=4)  # 0.018 = 60 %
    assert budgets.budgets_evaluate() == 1
    assert len(mail.outbox) == 1 and "50%" in mail.outbox[0].subject and received == []  # webhook failed
    assert budgets.budgets_evaluate() == 1  # the next evaluation retries the webhook only
    assert len(mail.outbox) == 1 and [r["threshold"] for r in received] == [50]
    assert budgets.budgets_evaluate() == 0

    _spend(admin_user, project, 3, start=6)  # 0.027 = 90 %
    budgets.budgets_evaluate()
    budgets.budgets_evaluate()
    assert [m.subject.split(": ")[1] for m in mail.outbox] == ["50% reached", "80% reached"]
    assert [r["threshold"] for r in received] == [50, 80] and received[1]["spent"] == "0.0270000000"
    status = budgets.budget_status(budget)
    assert status.thresholds_crossed == [50, 80] and status.forecast >= status.spent


def test_budget_check_names_the_spent_budget_and_its_reset(catalog, project, admin_user):
    assert budgets.budget_check(project=project, user=admin_user) is None
    budgets.budget_create(
        user=admin_user, project=project, fields={"name": "alice-daily", "scope": BudgetScope.USER,
        "user": admin_user, "amount": Decimal("0.005"), "period": BudgetPeriod.DAILY, "hard_limit": True},
    )  # fmt: skip
    _spend(admin_user, project, 1)
    assert budgets.budget_check(project=project, user=admin_user) is None
    _spend(admin_user, project, 1, start=1)
    exceeded = budgets.budget_check(project=project, user=admin_user, deployment="chat")
    tomorrow = (timezone.now() + datetime.timedelta(days=1)).astimezone(datetime.UTC).date()
    assert exceeded.budget.name == "alice-daily" and exceeded.resets_at.date() == tomorrow
    assert "Budget 'alice-daily'" in exceeded.message and exceeded.resets_at.isoformat() in exceeded.message


def test_budget_validation_is_a_400(project, admin_user, client_for):
    client = client_for(admin_user)
    for body in (
        {"project": "alpha", "name": "b", "amount": "1", "scope": "team"},
        {"project": "alpha", "name": "b", "amount": "-1"},
        {"project": "alpha", "name": "b", "amount": "1", "thresholds": [0]},
    ):
        response = client.post("/api/v1/accounting/budgets/", body, format="json")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid", body
