"""Deployment pages: the list, a deployment (revisions, traffic, manifests, timeline, "try it"), and the wizard that
creates a deployment or a new revision of one.

Views parse input, call a selector or service, and render. Deployments are looked up through the selectors, so one
the user may not see is a 404; the wizard and the actions need the deploy action (403 for someone who may only look).

The wizard keeps its draft in the session, one per project (and one per deployment for a new revision), under
`deployment-wizard:<project id>[:<deployment id>]`: the fields each step last posted, which steps validated, and
write-only values (the upstream key, new secret values) encrypted with apps.core.crypto and never shown back.
Each step is re-validated from the draft when the review is built, so what is deployed is what the steps checked.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

from django.contrib import messages
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.core import crypto, permissions
from apps.core import selectors as core_selectors
from apps.core.models import Project
from apps.core.pages import (
    dashboard_view,
    filtered,
    first_or_404,
    paginate,
    project_or_404,
    render_fragment,
    render_page,
)
from apps.core.permissions import Action
from apps.registry import selectors as registry_selectors
from apps.registry.models import ModelVersion, VersionStatus

from . import filters, selectors, services
from .forms import (
    EnvironmentStepForm,
    HardwareStepForm,
    ModelStepForm,
    RevisionNumberForm,
    RuntimeStepForm,
    ScalingStepForm,
    TargetStepForm,
    TrafficForm,
    TrafficStepForm,
    UpstreamStepForm,
)
from .manifests import ManifestError, validate_name
from .models import Deployment, Revision, Rollout, State, Target
from .spec import default_task, plan_request, resolve_spec

TIMELINE_SIZE = 100
VERSION_CHOICES = 500
DEFAULT_CONTEXT = 4096


def _deployment(request: HttpRequest, project_slug: str, deployment_id: int) -> tuple[Project, Deployment]:
    project = project_or_404(request, project_slug)
    deployment = first_or_404(selectors.deployment_list(user=request.user), project=project, pk=deployment_id)
    return project, deployment


def _error_dict(exc: ValidationError) -> dict[str, list[str]]:
    return exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}


# List ------------------------------------------------------------------------------------------------------------


@dashboard_view
def deployment_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    queryset = selectors.deployment_list(user=request.user).filter(project=project)
    filterset, queryset, status = filtered(filters.DeploymentFilter, request, queryset)
    page = paginate(request, queryset)
    context = {
        "project": project,
        "filter": filterset,
        "page": page,
        "rows": [_list_row(d) for d in page.object_list],
        "can_deploy": permissions.can(request.user, Action.DEPLOY, project),
    }
    return render_fragment(
        request,
        "deployments/deployment_list.html",
        "deployments/partials/deployment_table.html",
        context,
        section="deployments",
        status=status,
    )


def _list_row(deployment: Deployment) -> dict[str, Any]:
    revisions = sorted(deployment.revisions.all(), key=lambda r: -r.number)  # prefetched by the selector
    return {
        "deployment": deployment,
        "serving": [r for r in revisions if r.weight > 0],
        "shadow": next((r for r in revisions if r.pk == deployment.shadow_revision_id), None),
        "latest": revisions[0] if revisions else None,
        # The newest revisions that are not simply stopped: what the deployment is doing now.
        "states": [r for r in revisions if r.state != State.STOPPED][:4],
    }


# Detail and actions ----------------------------------------------------------------------------------------------


def _render_detail(
    request: HttpRequest,
    project: Project,
    deployment: Deployment,
    *,
    traffic_form: TrafficForm | None = None,
    status: int = 200,
) -> HttpResponse:
    user = request.user
    revisions = sorted(deployment.revisions.all(), key=lambda r: -r.number)
    can_deploy = permissions.can(user, Action.DEPLOY, deployment)
    weighable = [r for r in revisions if r.state in (State.READY, State.DRAINING)]
    shadowable = [r for r in revisions if r.state == State.READY]
    if can_deploy and traffic_form is None and weighable:
        traffic_form = TrafficForm(
            revisions=weighable,
            shadow_candidates=shadowable,
            initial={
                "shadow": next((r.number for r in revisions if r.pk == deployment.shadow_revision_id), None),
                "shadow_percent": deployment.shadow_percent or None,
            },
        )
    serving = [r for r in revisions if r.weight > 0]
    latest = revisions[0] if revisions else None
    shown = serving[0] if serving else latest
    context = {
        "project": project,
        "deployment": deployment,
        "revisions": revisions,
        "serving": serving,
        "latest": latest,
        "shadow": next((r for r in revisions if r.pk == deployment.shadow_revision_id), None),
        "can_deploy": can_deploy,
        "traffic_form": traffic_form if can_deploy else None,
        "can_rollback": any(r.ready_at for r in revisions[1:]),
        "events": list(selectors.state_event_list(deployment=deployment)[:TIMELINE_SIZE]),
        "events_url": reverse("deployments-api:deployment-events", args=[deployment.pk]),
        "manifest_url": reverse("deployments-api:deployment-manifest", args=[deployment.pk]),
        "socket_path": f"/ws/deployments/{deployment.pk}/",
        "try_it": _try_it(request, deployment, shown),
    }
    return render_fragment(
        request,
        "deployments/deployment_detail.html",
        "deployments/partials/revisions.html",
        context,
        section="deployments",
        status=status,
    )


def _try_it(request: HttpRequest, deployment: Deployment, revision: Revision | None) -> dict[str, str]:
    """curl and openai-python snippets for the gateway, with the deployment's slug as the model name."""
    base = request.build_absolute_uri("/").rstrip("/")
    embed = revision is not None and revision.task == "embed"
    model = deployment.slug
    if embed:
        body = f'{{"model": "{model}", "input": ["The quick brown fox"]}}'
        call = (
            f'response = client.embeddings.create(model="{model}", input=["The quick brown fox"])\n'
            "print(len(response.data[0].embedding))"
        )
        path = "/v1/embeddings"
    else:
        body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello."}}]}}'
        call = (
            "response = client.chat.completions.create(\n"
            f'    model="{model}",\n'
            '    messages=[{"role": "user", "content": "Say hello."}],\n'
            ")\n"
            "print(response.choices[0].message.content)"
        )
        path = "/v1/chat/completions"
    curl = (
        f"curl {base}{path} \\\n"
        '  -H "Authorization: Bearer $CONTROLPLANE_TOKEN" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{body}'"
    )
    python = (
        "import os\n\nfrom openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base}/v1", api_key=os.environ["CONTROLPLANE_TOKEN"])\n'
        f"{call}"
    )
    return {"path": path, "curl": curl, "python": python}


@dashboard_view
def deployment_detail(request: HttpRequest, project_slug: str, deployment_id: int) -> HttpResponse:
    project, deployment = _deployment(request, project_slug, deployment_id)
    return _render_detail(request, project, deployment)


def _refresh(request: HttpRequest, project: Project, deployment: Deployment) -> Deployment:
    return first_or_404(selectors.deployment_list(user=request.user), project=project, pk=deployment.pk)


def _act(request: HttpRequest, project_slug: str, deployment_id: int, action: Callable[..., str]) -> HttpResponse:
    """Run a service action, `action(deployment)` → what to tell the user; a refusal is shown as messages on the
    deployment page (400)."""
    project, deployment = _deployment(request, project_slug, deployment_id)
    permissions.check(request.user, Action.DEPLOY, deployment)
    try:
        done = action(deployment)
    except (ValidationError, ManifestError) as exc:
        for message in exc.messages if isinstance(exc, ValidationError) else [str(exc)]:
            messages.error(request, message)
        return _render_detail(request, project, _refresh(request, project, deployment), status=400)
    messages.success(request, done)
    return redirect("deployment-detail", project_slug=project.slug, deployment_id=deployment.pk)


@dashboard_view
@require_POST
def deployment_traffic(request: HttpRequest, project_slug: str, deployment_id: int) -> HttpResponse:
    project, deployment = _deployment(request, project_slug, deployment_id)
    permissions.check(request.user, Action.DEPLOY, deployment)
    revisions = sorted(deployment.revisions.all(), key=lambda r: -r.number)
    form = TrafficForm(
        request.POST,
        revisions=[r for r in revisions if r.state in (State.READY, State.DRAINING)],
        shadow_candidates=[r for r in revisions if r.state == State.READY],
    )
    if not form.is_valid():
        messages.error(request, "The traffic split was not changed: correct the marked fields.")
        return _render_detail(request, project, deployment, traffic_form=form, status=400)
    data = form.cleaned_data
    try:
        services.traffic_set(
            user=request.user,
            deployment=deployment,
            weights=form.weights(),
            shadow=data["shadow"],
            shadow_percent=data.get("shadow_percent") or 0,
        )
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return _render_detail(request, project, deployment, traffic_form=form, status=400)
    messages.success(request, "Traffic split updated.")
    return redirect("deployment-detail", project_slug=project.slug, deployment_id=deployment.pk)


def _posted_revision(request: HttpRequest, deployment: Deployment) -> Revision:
    form = RevisionNumberForm(request.POST)
    if not form.is_valid():
        raise ValidationError("Choose a revision.")
    revision = deployment.revisions.filter(number=form.cleaned_data["revision"]).first()
    if revision is None:
        raise ValidationError(f"No revision {form.cleaned_data['revision']}.")
    return revision


@dashboard_view
@require_POST
def revision_promote(request: HttpRequest, project_slug: str, deployment_id: int) -> HttpResponse:
    def promote(deployment: Deployment) -> str:
        revision = services.revision_promote(user=request.user, revision=_posted_revision(request, deployment))
        return f"Revision {revision.number} promoted: it takes all traffic."

    return _act(request, project_slug, deployment_id, promote)


@dashboard_view
@require_POST
def revision_restart(request: HttpRequest, project_slug: str, deployment_id: int) -> HttpResponse:
    def restart(deployment: Deployment) -> str:
        revision = services.revision_restart(user=request.user, revision=_posted_revision(request, deployment))
        return f"Revision {revision.number} is starting again."

    return _act(request, project_slug, deployment_id, restart)


@dashboard_view
@require_POST
def deployment_rollback(request: HttpRequest, project_slug: str, deployment_id: int) -> HttpResponse:
    def rollback(deployment: Deployment) -> str:
        revision = services.deployment_rollback(user=request.user, deployment=deployment)
        return f"Rolling back: traffic returns to revision {revision.number}."

    return _act(request, project_slug, deployment_id, rollback)


@dashboard_view
@require_POST
def deployment_stop(request: HttpRequest, project_slug: str, deployment_id: int) -> HttpResponse:
    def stop(deployment: Deployment) -> str:
        services.deployment_stop(user=request.user, deployment=deployment)
        return "Deployment stopped: requests are refused until a revision starts again."

    return _act(request, project_slug, deployment_id, stop)


# The wizard ------------------------------------------------------------------------------------------------------

STEP_TITLES = {
    "model": "Model",
    "target": "Target",
    "hardware": "Hardware",
    "runtime": "Runtime",
    "scaling": "Scaling",
    "traffic": "Traffic",
    "environment": "Environment",
    "review": "Review",
}
STEPS = tuple(STEP_TITLES)

# Which step owns each spec field, so an error from the services lands next to the field that caused it.
FIELD_STEPS = {
    "name": "model",
    "slug": "model",
    "description": "model",
    "model_version": "model",
    "target": "target",
    "cluster": "target",
    "upstream_url": "target",
    "upstream_model": "target",
    "upstream_key": "target",
    "accelerator": "hardware",
    "accelerator_count": "hardware",
    "tensor_parallel": "hardware",
    "pipeline_parallel": "hardware",
    "dtype": "hardware",
    "context_length": "hardware",
    "concurrent_sequences": "hardware",
    "memory_utilization": "hardware",
    "cpu": "hardware",
    "memory_gib": "hardware",
    "max_input_tokens": "runtime",
    "max_total_tokens": "runtime",
    "max_batch": "runtime",
    "task": "runtime",
    "min_replicas": "scaling",
    "max_replicas": "scaling",
    "target_concurrency": "scaling",
    "scale_to_zero_seconds": "scaling",
    "rollout": "traffic",
    "canary_weight": "traffic",
    "shadow_percent": "traffic",
    "env": "environment",
    "secret_refs": "environment",
    "secrets": "environment",
}
NOT_STORED = {"csrfmiddlewaretoken", "nav"}


def _querydict(raw: dict[str, list[str]]) -> QueryDict:
    data = QueryDict(mutable=True)
    for key, values in raw.items():
        data.setlist(key, values)
    return data


class Wizard:
    """The steps of one draft (a new deployment, or a new revision of `deployment`) and their forms."""

    def __init__(self, request: HttpRequest, project: Project, deployment: Deployment | None = None):
        self.request, self.user, self.project, self.deployment = request, request.user, project, deployment
        self.previous = (
            deployment.revisions.select_related("accelerator", "model_version__model").order_by("-number").first()
            if deployment
            else None
        )
        self.key = f"deployment-wizard:{project.pk}" + (f":{deployment.pk}" if deployment else "")
        self.draft: dict[str, Any] = request.session.get(self.key) or {"raw": {}, "valid": [], "sealed": {}}
        self._forms: dict[str, Any] = {}

    @property
    def new(self) -> bool:
        return self.deployment is None

    def save(self) -> None:
        self.request.session[self.key] = self.draft

    def discard(self) -> None:
        self.request.session.pop(self.key, None)

    def url(self, step: str) -> str:
        if self.new:
            return reverse("deployment-wizard", args=[self.project.slug, step])
        return reverse("revision-wizard", args=[self.project.slug, self.deployment.pk, step])

    def plan_url(self) -> str:
        if self.new:
            return reverse("deployment-wizard-plan", args=[self.project.slug])
        return reverse("revision-wizard-plan", args=[self.project.slug, self.deployment.pk])

    def discard_url(self) -> str:
        if self.new:
            return reverse("deployment-wizard-discard", args=[self.project.slug])
        return reverse("revision-wizard-discard", args=[self.project.slug, self.deployment.pk])

    # What the steps are, and which may be opened.

    @property
    def target(self) -> str:
        if self.deployment is not None:
            return self.deployment.target
        posted = self.draft["raw"].get("target", {}).get("target")
        return posted[0] if posted and posted[0] in Target.values else Target.LOCAL

    def steps(self) -> list[str]:
        runs_here = self.target != Target.EXTERNAL  # an external upstream has no hardware, replicas or env
        wanted = {"target": self.new, "hardware": runs_here, "scaling": runs_here, "environment": runs_here}
        return [step for step in STEPS if wanted.get(step, True)]

    def first_open(self, step: str) -> str:
        """`step` when every step before it validated, else the first one that did not."""
        for earlier in self.steps()[: self.steps().index(step)]:
            if earlier not in self.draft["valid"]:
                return earlier
        return step

    def stepper(self, current: str) -> list[dict]:
        steps = self.steps()
        return [
            {
                "name": step,
                "title": STEP_TITLES[step],
                "number": index + 1,
                "current": step == current,
                "done": step in self.draft["valid"],
                "url": self.url(step) if self.first_open(step) == step else None,
            }
            for index, step in enumerate(steps)
        ]

    # Choices the forms offer.

    @cached_property
    def versions(self) -> list[ModelVersion]:
        return list(
            registry_selectors.model_version_list(user=self.user, action=Action.DEPLOY)
            .prefetch_related(None)
            .filter(model__project=self.project, deleted_at__isnull=True, status=VersionStatus.READY)
            .select_related("model")
            .order_by("model__name", "-number")[:VERSION_CHOICES]
        )

    @cached_property
    def accelerators(self):
        return list(selectors.accelerator_list())

    @cached_property
    def secret_names(self) -> list[str]:
        names = core_selectors.project_secret_list(user=self.user).filter(project=self.project)
        return list(names.order_by("name").values_list("name", flat=True))

    @cached_property
    def allow_new_secrets(self) -> bool:
        # New values become project secrets, which only project admins may write (core.project_secret_set).
        return permissions.can(self.user, Action.MANAGE, self.project)

    # Forms.

    def form(self, step: str, data: QueryDict | None = None):
        """The step's form: bound to `data`, else to what the draft holds for it, else unbound with defaults."""
        if data is None and step in self._forms:
            return self._forms[step]
        stored = data is None and step in self.draft["raw"]
        bound = data if data is not None else (_querydict(self.draft["raw"][step]) if stored else None)
        initial = None if bound is not None else self.initial(step)
        sealed = self.draft["sealed"]
        if step == "model":
            if self.new or self.target != Target.EXTERNAL:
                form = ModelStepForm(bound, initial=initial, versions=self.versions, new_deployment=self.new)
            else:
                form = UpstreamStepForm(bound, initial=initial, key_stored=bool(sealed.get("upstream_key")))
        elif step == "target":
            clusters = selectors.cluster_list(user=self.user).filter(project=self.project)
            form = TargetStepForm(
                bound,
                initial=initial,
                clusters=list(clusters.values_list("name", flat=True)),
                has_version=bool(self.spec_of("model").get("model_version")),
                key_stored=bool(sealed.get("upstream_key")),
            )
        elif step == "hardware":
            form = HardwareStepForm(bound, initial=initial, accelerators=self.accelerators)
        elif step == "runtime":
            form = RuntimeStepForm(bound, initial=initial)
        elif step == "scaling":
            form = ScalingStepForm(bound, initial=initial)
        elif step == "traffic":
            form = TrafficStepForm(bound, initial=initial, first_revision=self.new)
        elif step == "environment":
            kwargs = {
                "secret_names": self.secret_names,
                "stored_secrets": set(sealed.get("secrets", {})),
                "allow_new_secrets": self.allow_new_secrets,
            }
            form = (
                EnvironmentStepForm(bound, **kwargs)
                if bound is not None
                else EnvironmentStepForm.from_spec(initial, **kwargs)
            )
        else:
            raise ValueError(step)
        if stored:
            self._forms[step] = form
        return form

    def spec_of(self, step: str) -> dict:
        """What a validated step contributes to the spec ({} when it has not validated)."""
        if step not in self.draft["raw"]:
            return {}
        form = self.form(step)
        return form.spec() if form.is_valid() else {}

    def collect(self, steps: list[str]) -> tuple[dict, str | None]:
        """The spec of `steps` from the draft, and the first of them that does not validate (None: all do)."""
        spec: dict[str, Any] = {}
        for step in steps:
            if step == "review":
                continue
            if step not in self.draft["raw"] or not self.form(step).is_valid():
                return spec, step
            spec.update(self.form(step).spec())
        return spec, None

    def version(self) -> ModelVersion | None:
        chosen = self.spec_of("model").get("model_version")
        if chosen is None:
            return self.previous.model_version if self.previous else None
        return next((v for v in self.versions if v.pk == chosen), None)

    def initial(self, step: str) -> dict[str, Any]:
        """Defaults for a step not yet posted: the latest revision's settings, or ones that suit the model."""
        previous = self.previous
        if previous is not None:
            return _revision_initial(previous, step)
        version = self.version()
        metadata = (version.metadata or {}) if version else {}
        max_context = metadata.get("max_context")
        context = min(DEFAULT_CONTEXT, max_context) if max_context else DEFAULT_CONTEXT
        if step == "target":
            return {"target": Target.LOCAL}
        if step == "hardware":
            cpu_first = self.target != Target.KUBERNETES
            accelerator = next((a for a in self.accelerators if a.is_cpu == cpu_first), None) or next(
                iter(self.accelerators), None
            )
            return {
                "accelerator": accelerator.name if accelerator else "",
                "accelerator_count": 1,
                "tensor_parallel": 1,
                "pipeline_parallel": 1,
                "dtype": _default_dtype(metadata),
                "context_length": context,
                "concurrent_sequences": 8,
                "memory_utilization": "0.90",
                "cpu": 1,
                "memory_gib": 4,
            }
        if step == "runtime":
            hardware = self.spec_of("hardware")
            total = min(hardware.get("context_length") or context, max_context or 10_000_000)
            return {
                "max_total_tokens": max(total, 2),
                "max_input_tokens": max(total // 2, 1),
                "max_batch": min(hardware.get("concurrent_sequences") or 8, 4096),
                "task": default_task(version) if version else "generate",
            }
        if step == "scaling":
            return {"min_replicas": 1, "max_replicas": 1, "target_concurrency": 4}
        if step == "traffic":
            return {"rollout": "all_at_once", "canary_weight": 10, "shadow_percent": 100}
        return {}

    # Posting a step.

    def store(self, step: str, form) -> None:
        """Keep what the step posted (write-only values encrypted apart), and whether it validated."""
        posted = self.request.POST
        sealed = self.draft["sealed"]
        secret_keys = set(getattr(form, "write_only", ()))
        if step == "environment":
            secret_keys |= {key for key in posted if key.startswith("new-") and key.endswith("-value")}
            stored = dict(sealed.get("secrets", {}))
            stored.update({name: crypto.encrypt(value) for name, value in form.secret_values().items()})
            named = {posted.get(key) for key in posted if key.startswith("new-") and key.endswith("-name")}
            sealed["secrets"] = {name: value for name, value in stored.items() if name in named}
        for key in getattr(form, "write_only", ()):
            value = posted.get(key, "")
            if value and len(value) <= 4000:
                sealed[key] = crypto.encrypt(value)
        self.draft["raw"][step] = {
            key: posted.getlist(key) for key in posted if key not in NOT_STORED and key not in secret_keys
        }
        self._forms.pop(step, None)
        self.mark(step, valid=form.is_valid())

    def mark(self, step: str, *, valid: bool) -> None:
        steps = [s for s in self.draft["valid"] if s != step]
        self.draft["valid"] = [*steps, step] if valid else steps

    def check_with_services(self, step: str, form) -> None:
        """Run the services' checks over the steps so far; their errors land on this step's fields, or on the
        earlier step they concern. Errors about later steps' defaults wait for those steps."""
        if step == "model":
            self._check_slug(form)
            return
        steps = self.steps()
        earlier = steps[: steps.index(step)]
        spec, invalid = self.collect(earlier)
        if invalid is not None:
            form.add_error(None, f"Step “{STEP_TITLES[invalid]}” needs attention first.")
            return
        spec.update(form.spec())
        try:
            resolve_spec(self.user, self.project, spec, previous=self.previous)
        except ValidationError as exc:
            for field, errors in _error_dict(exc).items():
                owner = self.step_of(field)
                if owner == step:
                    fields = getattr(form, "fields", {})
                    form.add_error(field if field in fields else None, errors)
                elif owner is None or owner in earlier:
                    where = f"{STEP_TITLES[owner]}: " if owner else ""
                    form.add_error(None, [f"{where}{error}" for error in errors])

    def _check_slug(self, form) -> None:
        """A new deployment's slug must be free in the project and able to name its InferenceService."""
        slug = form.cleaned_data.get("slug") if self.new else None
        if not slug:
            return
        if selectors.deployment_list(user=self.user).filter(project=self.project, slug=slug).exists():
            form.add_error("slug", f"A deployment {slug!r} already exists in this project.")
            return
        try:
            validate_name(slug, "default")
        except ManifestError as exc:
            form.add_error("slug", str(exc))

    def step_of(self, field: str) -> str | None:
        step = FIELD_STEPS.get(field)
        if step == "target" and not self.new:
            return "model"  # a new revision of an external deployment sets its upstream in the first step
        return step

    # The services.

    def service_data(self, spec: dict) -> dict:
        """The spec with the write-only values from the draft decrypted (the services encrypt them again)."""
        data = dict(spec)
        sealed = self.draft["sealed"]
        if self.target == Target.EXTERNAL and not data.get("upstream_key") and sealed.get("upstream_key"):
            data["upstream_key"] = crypto.decrypt(sealed["upstream_key"])
        stored = sealed.get("secrets", {})
        if "secrets" in data:
            data["secrets"] = {
                name: value or crypto.decrypt(stored[name])
                for name, value in data["secrets"].items()
                if value or name in stored
            }
            if not data["secrets"]:
                del data["secrets"]
        return data

    def run(self, spec: dict, *, dry_run: bool):
        data = {**self.service_data(spec), "dry_run": dry_run}
        if self.new:
            return services.deployment_create(user=self.user, project=self.project, data=data)
        return services.revision_create(user=self.user, deployment=self.deployment, data=data)


def _revision_initial(previous: Revision, step: str) -> dict[str, Any]:
    plan = previous.plan or {}
    if step == "model":
        return {
            "model_version": previous.model_version_id,
            "upstream_url": previous.upstream_url,
            "upstream_model": previous.upstream_model,
        }
    if step == "hardware":
        return {
            "accelerator": previous.accelerator.name,
            "accelerator_count": previous.accelerator_count,
            "tensor_parallel": previous.tensor_parallel,
            "pipeline_parallel": previous.pipeline_parallel,
            "dtype": previous.dtype,
            "context_length": plan.get("context_length") or previous.max_total_tokens,
            "concurrent_sequences": plan.get("concurrent_sequences") or previous.max_batch,
            "memory_utilization": previous.memory_utilization,
            "cpu": previous.cpu,
            "memory_gib": previous.memory_gib,
        }
    if step == "runtime":
        return {
            "max_input_tokens": previous.max_input_tokens,
            "max_total_tokens": previous.max_total_tokens,
            "max_batch": previous.max_batch,
            "task": previous.task,
        }
    if step == "scaling":
        return {
            "min_replicas": previous.min_replicas,
            "max_replicas": previous.max_replicas,
            "target_concurrency": previous.target_concurrency,
            "scale_to_zero_seconds": previous.scale_to_zero_seconds,
        }
    if step == "traffic":
        return {
            "rollout": previous.rollout,
            "canary_weight": previous.canary_weight or 10,
            "shadow_percent": previous.shadow_percent or 100,
        }
    if step == "environment":
        return {"env": previous.env, "secret_refs": previous.secret_refs}
    return {}


def _default_dtype(metadata: dict) -> str:
    """The checkpoint's own dtype when the planner knows it, else bf16."""
    names = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "int8": "int8"}
    return names.get(str(metadata.get("dtype", "")).lower(), "bf16")


def _wizard(request: HttpRequest, project_slug: str, deployment_id: int | None) -> Wizard:
    """The wizard, for users who may deploy in the project (or to the deployment): 404 when it is invisible."""
    if deployment_id is None:
        project = project_or_404(request, project_slug)
        permissions.check(request.user, Action.DEPLOY, project)
        return Wizard(request, project)
    project, deployment = _deployment(request, project_slug, deployment_id)
    permissions.check(request.user, Action.DEPLOY, deployment)
    return Wizard(request, project, deployment)


def _plan(wizard: Wizard, form: HardwareStepForm) -> dict[str, Any]:
    """The planner's verdict for the hardware form's values, and what to say when there is none."""
    if form.is_bound and not form.is_valid():
        return {"plan": None, "problem": "Correct the marked fields to see the plan."}
    values = form.cleaned_data if form.is_bound else form.initial
    version = wizard.version()
    if version is None:
        return {"plan": None, "problem": "Choose a model version first."}
    data = {
        "project": wizard.project,
        "model_version": version.pk,
        "target": wizard.target,
        **{key: value for key, value in values.items() if key not in ("cpu", "memory_gib")},
    }
    for key in ("accelerator_count", "tensor_parallel", "pipeline_parallel", "context_length", "concurrent_sequences"):
        data[key] = int(data[key])
    try:
        plan = plan_request(wizard.user, data)
    except (ValidationError, ValueError) as exc:
        messages_ = exc.messages if isinstance(exc, ValidationError) else [str(exc)]
        return {"plan": None, "problem": " ".join(messages_)}
    accelerator = next((a for a in wizard.accelerators if a.name == values.get("accelerator")), None)
    return {"plan": plan, "currency": accelerator.currency if accelerator else "", "version": version}


def _render_step(wizard: Wizard, step: str, form, *, status: int = 200, extra: dict | None = None) -> HttpResponse:
    steps = wizard.steps()
    index = steps.index(step)
    context = {
        "project": wizard.project,
        "deployment": wizard.deployment,
        "wizard": wizard,
        "step": step,
        "title": STEP_TITLES[step],
        "stepper": wizard.stepper(step),
        "form": form,
        "back_url": wizard.url(steps[index - 1]) if index else None,
        "is_last_form": steps[index + 1] == "review" if index + 1 < len(steps) else False,
        "version": wizard.version(),
        "previous": wizard.previous,
        "sealed": wizard.draft["sealed"],
        **(extra or {}),
    }
    if step == "hardware":
        context.update(_plan(wizard, form))
    return render_page(wizard.request, "deployments/wizard.html", context, section="deployments", status=status)


def _review(wizard: Wizard, *, deploy: bool) -> HttpResponse:
    spec, invalid = wizard.collect(wizard.steps())
    if invalid is not None:
        messages.info(wizard.request, f"Complete the step “{STEP_TITLES[invalid]}” first.")
        return redirect(wizard.url(invalid))
    errors: list[dict] = []
    try:
        result = wizard.run(spec, dry_run=not deploy)
    except ValidationError as exc:
        result = None
        for field, messages_ in _error_dict(exc).items():
            step = wizard.step_of(field)
            for message in messages_:
                errors.append(
                    {
                        "step": step,
                        "title": STEP_TITLES.get(step, ""),
                        "url": step and wizard.url(step),
                        "message": message,
                    }
                )
            if step:
                wizard.mark(step, valid=False)
        wizard.save()
    except ManifestError as exc:
        result = None
        errors.append({"step": None, "message": f"The manifest cannot be generated: {exc}"})
    if deploy and not errors:
        wizard.discard()
        if wizard.new:
            messages.success(wizard.request, f"Deployment {result.slug} created: its first revision is starting.")
            deployment_id = result.pk
        else:
            messages.success(wizard.request, f"Revision {result.number} created: it is starting.")
            deployment_id = wizard.deployment.pk
        return redirect("deployment-detail", project_slug=wizard.project.slug, deployment_id=deployment_id)
    if deploy:  # the deploy was refused: show the review (the dry run) with the errors
        try:
            result = wizard.run(spec, dry_run=True)
        except (ValidationError, ManifestError):
            result = None
    version = wizard.version()
    monthly = (result or {}).get("plan", {}).get("monthly_cost") if isinstance(result, dict) else None
    context = {
        "result": result,
        "monthly_cost": (
            {"low": monthly * spec["min_replicas"], "high": monthly * spec["max_replicas"]}
            if monthly is not None and "min_replicas" in spec
            else None
        ),
        "errors": errors,
        "summary": _summary(wizard, spec, version),
        "new_secrets": sorted((spec.get("secrets") or {}).keys()),
    }
    return _render_step(wizard, "review", None, status=400 if errors else 200, extra=context)


def _summary(wizard: Wizard, spec: dict, version: ModelVersion | None) -> list[tuple[str, str]]:
    """What will be deployed, as label/value rows for the review (never a secret value)."""
    rows: list[tuple[str, str]] = []
    if wizard.new:
        rows += [("Name", spec.get("name", "")), ("Slug (model name)", spec.get("slug", ""))]
        rows.append(("Target", Target(spec.get("target", Target.LOCAL)).label))
        if spec.get("cluster"):
            rows.append(("Cluster", spec["cluster"]))
    else:
        rows.append(("Deployment", wizard.deployment.slug))
    if wizard.target == Target.EXTERNAL:
        rows += [("Upstream", spec.get("upstream_url", "")), ("Upstream model", spec.get("upstream_model", ""))]
        has_key = bool(spec.get("upstream_key") or wizard.draft["sealed"].get("upstream_key"))
        rows.append(("Upstream key", "set (write-only)" if has_key else "none"))
    elif version is not None:
        rows.append(("Model version", f"{version.model.name}:{version.number}"))
    if "accelerator" in spec:
        rows.append(
            (
                "Hardware",
                f"{spec['accelerator_count']} × {spec['accelerator']}, TP {spec['tensor_parallel']} · "
                f"PP {spec['pipeline_parallel']}, {spec['dtype']}, {spec['cpu']} CPU, {spec['memory_gib']} GiB",
            )
        )
    if "max_total_tokens" in spec:
        rows.append(
            (
                "Runtime",
                f"{spec['task']}, ≤ {spec['max_input_tokens']} input / {spec['max_total_tokens']} total tokens, "
                f"batch {spec['max_batch']}",
            )
        )
    if "min_replicas" in spec:
        idle = spec.get("scale_to_zero_seconds")
        rows.append(
            (
                "Scaling",
                f"{spec['min_replicas']}–{spec['max_replicas']} replicas at {spec['target_concurrency']} in flight"
                + (f", to zero after {idle} s idle" if idle else ""),
            )
        )
    if "rollout" in spec:
        rollout = Rollout(spec["rollout"]).label
        if spec["rollout"] == Rollout.CANARY:
            rollout += f" ({spec['canary_weight']} %)"
        if spec["rollout"] == Rollout.SHADOW:
            rollout += f" ({spec['shadow_percent']} %)"
        rows.append(("Rollout", rollout))
    elif wizard.new:
        rows.append(("Rollout", "All traffic once ready (first revision)"))
    if spec.get("env"):
        rows.append(("Environment", ", ".join(sorted(spec["env"]))))
    if spec.get("secret_refs"):
        rows.append(("Secrets", ", ".join(f"{k} ← {v}" for k, v in sorted(spec["secret_refs"].items()))))
    return rows


def _wizard_step(request: HttpRequest, wizard: Wizard, step: str) -> HttpResponse:
    if step not in wizard.steps():
        return redirect(wizard.url(wizard.steps()[0]))
    opened = wizard.first_open(step)
    if opened != step:
        return redirect(wizard.url(opened))
    if step == "review":
        return _review(wizard, deploy=request.method == "POST")
    if request.method != "POST":
        return _render_step(wizard, step, wizard.form(step))
    nav = request.POST.get("nav", "next")
    form = wizard.form(step, data=request.POST)
    if nav == "more" and isinstance(form, EnvironmentStepForm):
        wizard.store(step, form)
        wizard.save()
        return _render_step(wizard, step, form.with_more_rows(set(wizard.draft["sealed"].get("secrets", {}))))
    if nav != "back" and form.is_valid():
        wizard.check_with_services(step, form)
    wizard.store(step, form)
    steps = wizard.steps()  # the target step may have changed which steps there are
    if nav == "back":
        wizard.save()
        index = steps.index(step) if step in steps else 1
        return redirect(wizard.url(steps[max(index - 1, 0)]))
    if form.errors or not form.is_valid():
        wizard.mark(step, valid=False)
        wizard.save()
        return _render_step(wizard, step, form, status=400)
    wizard.save()
    return redirect(wizard.url(steps[steps.index(step) + 1]))


@dashboard_view
def wizard_start(request: HttpRequest, project_slug: str, deployment_id: int | None = None) -> HttpResponse:
    wizard = _wizard(request, project_slug, deployment_id)
    return redirect(wizard.url(wizard.first_open("review")) if wizard.draft["raw"] else wizard.url("model"))


@dashboard_view
def wizard_step(request: HttpRequest, project_slug: str, step: str, deployment_id: int | None = None) -> HttpResponse:
    return _wizard_step(request, _wizard(request, project_slug, deployment_id), step)


@dashboard_view
@require_POST
def wizard_plan(request: HttpRequest, project_slug: str, deployment_id: int | None = None) -> HttpResponse:
    """The planner's verdict for the hardware step's current values (htmx fragment; nothing is stored)."""
    wizard = _wizard(request, project_slug, deployment_id)
    form = HardwareStepForm(request.POST, accelerators=wizard.accelerators)
    return render(request, "deployments/partials/plan_panel.html", {"wizard": wizard, **_plan(wizard, form)})


@dashboard_view
@require_POST
def wizard_discard(request: HttpRequest, project_slug: str, deployment_id: int | None = None) -> HttpResponse:
    wizard = _wizard(request, project_slug, deployment_id)
    wizard.discard()
    messages.info(request, "Draft discarded.")
    if wizard.new:
        return redirect("deployment-list", project_slug=wizard.project.slug)
    return redirect("deployment-detail", project_slug=wizard.project.slug, deployment_id=wizard.deployment.pk)
