"""Registry page forms. They check shape; the services decide."""

from __future__ import annotations

import re

from django import forms

from apps.core.models import Project

from . import selectors
from .models import ModelVersion
from .services import ALIAS_RE

VERSION_REF_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127}):(?P<number>[0-9]{1,9})$")


class AliasSetForm(forms.Form):
    alias = forms.RegexField(
        regex=ALIAS_RE,
        max_length=64,
        error_messages={"invalid": "Use lowercase letters, digits, '_' or '-' (at most 64, starting a-z)."},
    )
    version = forms.IntegerField(min_value=1, max_value=2**31 - 1, help_text="Version number")
    reason = forms.CharField(max_length=1000, required=False)


class VersionRefField(forms.CharField):
    """A version written `model:number` (e.g. `tiny-gpt2:3`), resolved to one the user may see in the project."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, max_length=140, **kwargs)

    def clean(self, value) -> ModelVersion:
        text = super().clean(value)
        match = VERSION_REF_RE.match(text.strip())
        if match is None:
            raise forms.ValidationError("Write the version as model:number, e.g. tiny-gpt2:1.")
        version = (
            selectors.model_version_list(user=self.user)
            .filter(model__project=self.project, model__name=match["name"], number=int(match["number"]))
            .first()
        )
        if version is None:
            raise forms.ValidationError(f"No version {text} in this project.")
        return version


class VersionCompareForm(forms.Form):
    a = VersionRefField(label="Version A")
    b = VersionRefField(label="Version B")

    def __init__(self, *args, user, project: Project, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.user, field.project = user, project
