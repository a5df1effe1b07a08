"""Deployment page forms: one per wizard step, and the traffic form. They check shape; `resolve_spec` and the
services decide the rest (versions, accelerators, secrets, how the fields fit together).

Each step form's `spec()` returns its part of a deployment spec, keyed like `SpecSerializer`'s fields, so the
wizard hands the services the same dictionary the API does.
"""

from __future__ import annotations

import re
from decimal import Decimal

from django import forms

from .models import Dtype, Rollout, Target
from .spec import ENV_NAME, RESERVED_ENV

SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
TASK_CHOICES = [("generate", "Generate text (chat, completions)"), ("embed", "Embeddings")]
MAX_ENV_ROWS = 100


def numeric(size: int = 8) -> forms.TextInput:
    """A text box for numbers: the dashboard styles text inputs, and `inputmode` brings up a numeric keypad."""
    return forms.TextInput(attrs={"inputmode": "decimal", "size": size, "autocomplete": "off"})


def integer(label: str, *, min_value: int, max_value: int, required: bool = True, **kwargs) -> forms.IntegerField:
    return forms.IntegerField(
        label=label, min_value=min_value, max_value=max_value, required=required, widget=numeric(), **kwargs
    )


def derived_slug(name: str) -> str:
    """The slug the services derive from a name when none is given (spec._deployment_fields)."""
    return re.sub(r"[^a-z0-9-]+", "-", (name or "").lower()).strip("-")[:63]


class StepForm(forms.Form):
    """A wizard step. `spec()` is its part of the deployment spec; only called on a valid form."""

    # Fields whose values are never stored in the draft or shown back (write-only secrets).
    write_only: tuple[str, ...] = ()

    def spec(self) -> dict:
        return dict(self.cleaned_data)


# Step 1: the model ---------------------------------------------------------------------------------------------


class ModelStepForm(StepForm):
    """The deployment's name and the model version it serves. A new deployment may leave the version empty when it
    proxies an external API (chosen in the next step); a new revision must name one."""

    name = forms.CharField(max_length=100, help_text="Shown on the dashboard.")
    slug = forms.RegexField(
        regex=SLUG_RE,
        max_length=63,
        required=False,
        help_text="The `model` name clients send. Empty: made from the name.",
        error_messages={"invalid": "Lower-case letters, digits and dashes (a DNS label)."},
    )
    description = forms.CharField(max_length=10_000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    model_version = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="Model version")

    def __init__(self, *args, versions, new_deployment: bool, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["model_version"]
        choices = [(v.pk, f"{v.model.name}:{v.number}{_version_facts(v)}") for v in versions]
        if new_deployment:
            field.choices = [("", "None: proxy an external OpenAI-compatible API"), *choices]
        else:
            for name in ("name", "slug", "description"):
                del self.fields[name]
            field.required = True
            field.choices = choices
            field.help_text = "Ready versions of this project you may deploy."

    def clean(self):
        data = super().clean()
        if "name" in self.fields and data.get("name") and not data.get("slug"):
            data["slug"] = derived_slug(data["name"])
            if not SLUG_RE.match(data["slug"]):
                self.add_error("slug", "The name gives no usable slug; write one.")
        return data

    def spec(self) -> dict:
        data = {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
        if "description" in self.fields:
            data["description"] = self.cleaned_data.get("description", "")
        return data


def _version_facts(version) -> str:
    parameters = version.parameter_count
    if not parameters:
        return ""
    if parameters >= 1_000_000_000:
        return f" ({parameters / 1e9:.1f} B parameters)"
    if parameters >= 1_000_000:
        return f" ({parameters / 1e6:.1f} M parameters)"
    return f" ({parameters:,} parameters)"


class UpstreamFields(StepForm):
    """An OpenAI-compatible upstream. The key is write-only: kept encrypted in the draft, never shown back."""

    write_only = ("upstream_key",)

    upstream_url = forms.URLField(
        max_length=500,
        assume_scheme="https",
        required=False,
        label="Upstream base URL",
        widget=forms.TextInput(attrs={"placeholder": "https://api.example.com/v1", "size": 40}),
    )
    upstream_model = forms.CharField(
        max_length=200,
        required=False,
        label="Upstream model name",
        widget=forms.TextInput(attrs={"placeholder": "gpt-4o-mini"}),
    )
    upstream_key = forms.CharField(
        max_length=4000,
        required=False,
        label="Upstream API key",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: stored encrypted, never shown again.",
    )

    def __init__(self, *args, key_stored: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if key_stored:
            self.fields["upstream_key"].help_text = "A key is stored (encrypted). Leave empty to keep it."

    def require_upstream(self, data: dict) -> None:
        if not data.get("upstream_url"):
            self.add_error("upstream_url", "An external deployment needs the upstream's base URL.")
        if not data.get("upstream_model"):
            self.add_error("upstream_model", "Name the upstream model, e.g. gpt-4o-mini.")

    def spec(self) -> dict:
        data = {key: self.cleaned_data[key] for key in ("upstream_url", "upstream_model")}
        if self.cleaned_data.get("upstream_key"):
            data["upstream_key"] = self.cleaned_data["upstream_key"]
        return data


class UpstreamStepForm(UpstreamFields):
    """The model step of a new revision of an external deployment: where its traffic goes."""

    def clean(self):
        data = super().clean()
        self.require_upstream(data)
        return data


# Step 2: the target --------------------------------------------------------------------------------------------


class TargetStepForm(UpstreamFields):
    target = forms.ChoiceField(choices=Target.choices, widget=forms.RadioSelect, initial=Target.LOCAL)
    cluster = forms.ChoiceField(required=False, label="Kubernetes cluster")

    field_order = ["target", "cluster", "upstream_url", "upstream_model", "upstream_key"]

    def __init__(self, *args, clusters: list[str], has_version: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.has_version = has_version
        self.fields["cluster"].choices = [("", "None: download the manifest and apply it yourself")] + [
            (name, name) for name in clusters
        ]

    def clean(self):
        data = super().clean()
        target = data.get("target")
        if target == Target.EXTERNAL:
            self.require_upstream(data)
        elif target and not self.has_version:
            self.add_error(
                "target", "No model version was chosen in step 1: go back and choose one, or pick the external target."
            )
        return data

    def spec(self) -> dict:
        target = self.cleaned_data["target"]
        data = {"target": target}
        if target == Target.KUBERNETES and self.cleaned_data.get("cluster"):
            data["cluster"] = self.cleaned_data["cluster"]
        if target == Target.EXTERNAL:
            data.update(super().spec())
        return data


# Step 3: hardware ----------------------------------------------------------------------------------------------


class HardwareStepForm(StepForm):
    """Where it runs. The planner's verdict for these fields is shown beside the form and updated as they change."""

    accelerator = forms.ChoiceField()
    accelerator_count = integer("Accelerators per replica", min_value=1, max_value=64)
    tensor_parallel = integer("Tensor parallel", min_value=1, max_value=64)
    pipeline_parallel = integer("Pipeline parallel", min_value=1, max_value=64)
    dtype = forms.ChoiceField(choices=Dtype.choices, label="Weights dtype")
    context_length = integer(
        "Context length", min_value=1, max_value=10_000_000, help_text="Tokens per sequence the plan must hold."
    )
    concurrent_sequences = integer(
        "Concurrent sequences", min_value=1, max_value=100_000, help_text="Sequences served at once at that length."
    )
    memory_utilization = forms.DecimalField(
        label="Memory utilisation",
        max_digits=3,
        decimal_places=2,
        min_value=Decimal("0.10"),
        max_value=Decimal("1.00"),
        widget=numeric(5),
        help_text="Share of each device's memory the runtime may use.",
    )
    cpu = forms.DecimalField(
        label="CPU cores", max_digits=6, decimal_places=2, min_value=Decimal("0.1"), widget=numeric(6)
    )
    memory_gib = forms.DecimalField(
        label="Host memory (GiB)", max_digits=8, decimal_places=2, min_value=Decimal("0.25"), widget=numeric(6)
    )

    def __init__(self, *args, accelerators, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["accelerator"].choices = [
            (a.name, f"{a.name} · {float(a.memory_gib):g} GiB · {float(a.hourly_price):g} {a.currency}/h")
            for a in accelerators
        ]


# Step 4: runtime -----------------------------------------------------------------------------------------------


class RuntimeStepForm(StepForm):
    max_input_tokens = integer("Max input tokens", min_value=1, max_value=10_000_000)
    max_total_tokens = integer(
        "Max total tokens", min_value=2, max_value=10_000_000, help_text="Input plus output, per request."
    )
    max_batch = integer("Max batch", min_value=1, max_value=4096, help_text="Requests the runtime batches together.")
    task = forms.ChoiceField(choices=TASK_CHOICES)

    def clean(self):
        data = super().clean()
        low, high = data.get("max_input_tokens"), data.get("max_total_tokens")
        if low and high and low >= high:
            self.add_error("max_input_tokens", "Must be below max total tokens (room is needed for the answer).")
        return data


# Step 5: scaling -----------------------------------------------------------------------------------------------


class ScalingStepForm(StepForm):
    min_replicas = integer("Min replicas", min_value=0, max_value=100)
    max_replicas = integer("Max replicas", min_value=1, max_value=100)
    target_concurrency = integer(
        "Target concurrency", min_value=1, max_value=10_000, help_text="In-flight requests per replica before scaling."
    )
    scale_to_zero_seconds = integer(
        "Scale to zero after (idle seconds)",
        min_value=10,
        max_value=7 * 86400,
        required=False,
        help_text="Stop every replica after this long without requests. Empty: never.",
    )

    def clean(self):
        data = super().clean()
        low, high = data.get("min_replicas"), data.get("max_replicas")
        if low is not None and high is not None and low > high:
            self.add_error("min_replicas", "Must not exceed max replicas.")
        if low == 0 and not data.get("scale_to_zero_seconds"):
            self.add_error("scale_to_zero_seconds", "Min replicas 0 needs an idle time after which replicas stop.")
        return data


# Step 6: traffic -----------------------------------------------------------------------------------------------


class TrafficStepForm(StepForm):
    """How a new revision takes traffic once ready. A first revision always takes all of it: no fields then."""

    rollout = forms.ChoiceField(choices=Rollout.choices, widget=forms.RadioSelect)
    canary_weight = integer("Canary weight (%)", min_value=1, max_value=99, required=False)
    shadow_percent = integer("Shadow share (%)", min_value=1, max_value=100, required=False)

    def __init__(self, *args, first_revision: bool, **kwargs):
        super().__init__(*args, **kwargs)
        if first_revision:
            self.fields.clear()

    def clean(self):
        data = super().clean()
        if data.get("rollout") == Rollout.CANARY and not data.get("canary_weight"):
            self.add_error("canary_weight", "Give the canary's share of traffic (1–99 %).")
        if data.get("rollout") == Rollout.SHADOW and not data.get("shadow_percent"):
            self.add_error("shadow_percent", "Give the share of requests to mirror (1–100 %).")
        return data

    def spec(self) -> dict:
        if not self.fields:
            return {}
        data = {"rollout": self.cleaned_data["rollout"]}
        if data["rollout"] == Rollout.CANARY:
            data["canary_weight"] = self.cleaned_data["canary_weight"]
        if data["rollout"] == Rollout.SHADOW:
            data["shadow_percent"] = self.cleaned_data["shadow_percent"]
        return data


# Step 7: environment and secrets -------------------------------------------------------------------------------


def _env_name(value: str) -> str:
    value = value.strip()
    if not ENV_NAME.match(value) or value.upper() in RESERVED_ENV:
        raise forms.ValidationError(f"{value!r} is not an allowed environment variable name.")
    return value


class EnvRowForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, widget=forms.TextInput(attrs={"placeholder": "NAME"}))
    value = forms.CharField(max_length=4000, required=False)

    def clean_name(self):
        return _env_name(self.cleaned_data["name"]) if self.cleaned_data["name"].strip() else ""

    def clean(self):
        data = super().clean()
        if data.get("value") and not data.get("name"):
            self.add_error("name", "Name the variable.")
        return data


class SecretRefRowForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, widget=forms.TextInput(attrs={"placeholder": "NAME"}))
    secret = forms.ChoiceField(required=False)

    def __init__(self, *args, secret_names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["secret"].choices = [("", "Choose a project secret…")] + [(n, n) for n in secret_names]

    def clean_name(self):
        return _env_name(self.cleaned_data["name"]) if self.cleaned_data["name"].strip() else ""

    def clean(self):
        data = super().clean()
        if data.get("name") and not data.get("secret"):
            self.add_error("secret", "Choose the secret.")
        if data.get("secret") and not data.get("name"):
            self.add_error("name", "Name the variable.")
        return data


class NewSecretRowForm(forms.Form):
    """A new secret value: write-only. A row whose value was entered before keeps it (encrypted in the draft)."""

    name = forms.CharField(max_length=100, required=False, widget=forms.TextInput(attrs={"placeholder": "NAME"}))
    value = forms.CharField(
        max_length=10_000,
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args, stored_names: set[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.stored_names = stored_names

    def clean_name(self):
        return _env_name(self.cleaned_data["name"]) if self.cleaned_data["name"].strip() else ""

    def clean(self):
        data = super().clean()
        name = data.get("name")
        if data.get("value") and not name and "name" not in self.errors:
            self.add_error("name", "Name the variable.")
        if name and not data.get("value") and name not in self.stored_names:
            self.add_error("value", "Enter the secret's value.")
        return data

    @property
    def stored(self) -> bool:
        name = self["name"].value()
        return bool(name) and name in self.stored_names


EnvFormSet = forms.formset_factory(EnvRowForm, extra=0, max_num=MAX_ENV_ROWS, validate_max=True)
SecretRefFormSet = forms.formset_factory(SecretRefRowForm, extra=0, max_num=MAX_ENV_ROWS, validate_max=True)
NewSecretFormSet = forms.formset_factory(NewSecretRowForm, extra=0, max_num=MAX_ENV_ROWS, validate_max=True)


class EnvironmentStepForm:
    """Three row sets: plain variables, references to existing project secrets, and new secret values.

    Not a single Django form: it wraps three formsets, with the interface the wizard expects of a step form.
    New secret values are write-only; `secret_values()` hands them to the wizard to keep encrypted.
    """

    write_only: tuple[str, ...] = ()
    BLANK_ROWS = 2

    def __init__(
        self,
        data=None,
        *,
        initial: dict | None = None,
        secret_names: list[str],
        stored_secrets: set[str],
        allow_new_secrets: bool,
    ):
        initial = initial or {}
        self.is_bound = data is not None
        self.allow_new_secrets = allow_new_secrets
        self._errors: list[str] = []
        self._valid: bool | None = None
        self._kwargs = {"secret_names": secret_names, "stored_secrets": stored_secrets}
        self.env = EnvFormSet(data, prefix="env", initial=initial.get("env"))
        self.refs = SecretRefFormSet(
            data, prefix="ref", initial=initial.get("ref"), form_kwargs={"secret_names": secret_names}
        )
        self.secrets = NewSecretFormSet(
            data, prefix="new", initial=initial.get("new"), form_kwargs={"stored_names": stored_secrets}
        )
        if not self.is_bound:
            for formset in (self.env, self.refs, self.secrets):
                formset.extra = self.BLANK_ROWS

    @classmethod
    def from_spec(cls, spec: dict, **kwargs) -> EnvironmentStepForm:
        """An unbound step showing a revision's variables and secret references (a new revision starts there)."""
        rows = {
            "env": [{"name": k, "value": v} for k, v in (spec.get("env") or {}).items()],
            "ref": [{"name": k, "secret": v} for k, v in (spec.get("secret_refs") or {}).items()],
        }
        return cls(initial=rows, **kwargs)

    def with_more_rows(self, stored_secrets: set[str]) -> EnvironmentStepForm:
        """The posted rows again, unvalidated, with blank rows below them ("Add rows"). `stored_secrets`: the names
        whose values are now kept encrypted (including any typed in this request)."""
        data = self.env.data
        rows = {
            "env": _rows(data, "env", ("name", "value")),
            "ref": _rows(data, "ref", ("name", "secret")),
            "new": _rows(data, "new", ("name",)),
        }
        return type(self)(
            initial=rows,
            secret_names=self._kwargs["secret_names"],
            stored_secrets=stored_secrets,
            allow_new_secrets=self.allow_new_secrets,
        )

    @property
    def formsets(self):
        sets = [self.env, self.refs]
        return [*sets, self.secrets] if self.allow_new_secrets else sets

    def is_valid(self) -> bool:
        if not self.is_bound:
            return False
        if self._valid is None:
            self._valid = self._validate()
        return self._valid

    def _validate(self) -> bool:
        results = [formset.is_valid() for formset in self.formsets]  # every formset, so each shows its errors
        valid = all(results)
        if not valid:
            return False
        seen: dict[str, str] = {}
        for label, formset in (("variable", self.env), ("secret reference", self.refs), ("new secret", self.secrets)):
            if formset not in self.formsets:
                continue
            for form in formset.forms:
                name = form.cleaned_data.get("name")
                if not name:
                    continue
                if name in seen:
                    form.add_error("name", f"{name} is already set as a {seen[name]}.")
                    valid = False
                seen[name] = label
        return valid

    def add_error(self, field, message) -> None:
        self._errors.extend(message if isinstance(message, list) else [message])

    def non_field_errors(self) -> list[str]:
        return self._errors

    @property
    def errors(self) -> bool:
        return bool(self._errors) or any(fs.total_error_count() for fs in self.formsets if fs.is_bound)

    def _named(self, formset, key: str) -> dict[str, str]:
        return {f.cleaned_data["name"]: f.cleaned_data[key] for f in formset.forms if f.cleaned_data.get("name")}

    def spec(self) -> dict:
        data = {"env": self._named(self.env, "value"), "secret_refs": self._named(self.refs, "secret")}
        if self.allow_new_secrets:
            rows = [f.cleaned_data for f in self.secrets.forms if f.cleaned_data.get("name")]
            data["secrets"] = {row["name"]: row["value"] for row in rows}
        return data

    def secret_values(self) -> dict[str, str]:
        """New values typed in this request, from every row that is valid on its own (names without a value keep
        the stored one)."""
        if not self.allow_new_secrets or not self.is_bound or not self.secrets.management_form.is_valid():
            return {}
        return {
            f.cleaned_data["name"]: f.cleaned_data["value"]
            for f in self.secrets.forms
            if f.is_valid() and f.cleaned_data.get("name") and f.cleaned_data.get("value")
        }


def _rows(data, prefix: str, keys: tuple[str, ...]) -> list[dict]:
    """The rows posted for a formset (blank ones dropped), to show again with more blank rows."""
    try:
        total = min(int(data.get(f"{prefix}-TOTAL_FORMS", 0)), MAX_ENV_ROWS)
    except ValueError:
        total = 0
    rows = [{key: data.get(f"{prefix}-{i}-{key}", "") for key in keys} for i in range(total)]
    return [row for row in rows if any(row.values())]


# Detail page ---------------------------------------------------------------------------------------------------


class TrafficForm(forms.Form):
    """Weights for the revisions that may take traffic (ready or draining), and an optional shadow."""

    shadow = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="Shadow revision")
    shadow_percent = integer("Shadow share (%)", min_value=0, max_value=100, required=False)

    def __init__(self, *args, revisions, shadow_candidates, **kwargs):
        super().__init__(*args, **kwargs)
        self.numbers = [r.number for r in revisions]
        for revision in revisions:
            self.fields[f"weight_{revision.number}"] = integer(
                f"Revision {revision.number}", min_value=0, max_value=100, initial=revision.weight
            )
        self.fields["shadow"].choices = [("", "No shadow")] + [
            (r.number, f"Revision {r.number}") for r in shadow_candidates
        ]
        self.order_fields([f"weight_{n}" for n in self.numbers] + ["shadow", "shadow_percent"])

    def weight_fields(self):
        return [self[f"weight_{n}"] for n in self.numbers]

    def weights(self) -> dict[int, int]:
        return {n: self.cleaned_data[f"weight_{n}"] for n in self.numbers}

    def clean(self):
        data = super().clean()
        if data.get("shadow") is not None and not data.get("shadow_percent"):
            self.add_error("shadow_percent", "Give the share of requests to mirror to the shadow.")
        return data


class RevisionNumberForm(forms.Form):
    revision = forms.IntegerField(min_value=1, max_value=2**31 - 1)
