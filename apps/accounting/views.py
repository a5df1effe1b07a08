"""Accounting pages: spend (charts and tables over the usage rollups and GPU cost) and the token counter.

Views parse input, call spend.py / token_costs.py, and render. The spend page takes the query parameters of
`GET /api/v1/accounting/usage/summary`, so its address, its CSV export and the API answer the same question.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone

from apps.core.pages import dashboard_view, project_or_404, render_fragment

from . import selectors, spend, token_costs
from .forms import TokenCountForm

FILTERS = ("model", "deployment", "user", "team")
VERSION_CHOICES = 100


def _query(params: dict) -> str:
    return urlencode({key: value for key, value in params.items() if value})


@dashboard_view
def spend_page(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    report = spend.spend_report(user=request.user, project=project, params=request.GET, now=timezone.now())
    period = report.period
    values = {name: request.GET.get(name, "") for name in FILTERS}
    shared = {
        "project": project.slug,
        "group_by": report.group_by,
        "from": period.start.isoformat() if period else request.GET.get("from", ""),
        "to": period.end.isoformat() if period else request.GET.get("to", ""),
        **values,
    }
    context = {
        "project": project,
        "report": report,
        "values": values,
        "groups": spend.GROUPS,
        "start_date": period.start.date().isoformat() if period else request.GET.get("from", ""),
        "end_date": period.end.date().isoformat() if period else request.GET.get("to", ""),
        "filtered": any(values.values()),
        "csv_url": f"{reverse('accounting-api:usage-summary-csv')}?{_query(shared)}",
        "summary_url": f"{reverse('accounting-api:usage-summary')}?{_query(shared)}",
        "gpu_url": (
            f"{reverse('accounting-api:usage-gpu-cost-list')}?"
            f"{_query({k: shared[k] for k in ('project', 'deployment', 'from', 'to')})}"
        ),
    }
    return render_fragment(
        request,
        "accounting/spend.html",
        "accounting/partials/spend_body.html",
        context,
        section="spend",
        status=400 if report.errors else 200,
    )


@dashboard_view
def token_page(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    versions = [
        (v.pk, f"{v.model.name}:{v.number}")
        for v in selectors.tokenizer_version_list(user=request.user, project=project)[:VERSION_CHOICES]
    ]
    form = TokenCountForm(request.POST if request.method == "POST" else None, versions=versions)
    comparison, status = None, 200
    if form.is_bound:
        if form.is_valid():
            data = form.cleaned_data
            version = data.get("version")
            comparison = token_costs.token_comparison(
                project=project,
                text=data["text"],
                models=[data["model"]] if data.get("model") else [],
                versions=[(version, form.versions[version])] if version else [],
                now=timezone.now(),
            )
        else:
            status = 400
    context = {
        "project": project,
        "form": form,
        "comparison": comparison,
        "catalog_models": token_costs.COMPARED_MODELS,
    }
    return render_fragment(
        request,
        "accounting/tokens.html",
        "accounting/partials/token_results.html",
        context,
        section="spend",
        status=status,
    )
