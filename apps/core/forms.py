"""Forms for the dashboard. They check shape; services enforce permissions and invariants."""

from __future__ import annotations

import datetime
import math

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.utils import timezone

from . import ratelimit, selectors
from .middleware import client_ip
from .models import Project, Role, TokenScope

User = get_user_model()


class LoginForm(AuthenticationForm):
    """Sign-in that refuses attempts once a username or client address has failed too often."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "rate_limited": "Too many failed sign-in attempts. Try again in %(minutes)s minutes.",
    }

    def __init__(self, request=None, *args, **kwargs):
        super().__init__(request, *args, **kwargs)
        self.rate_limited = False

    def clean(self):
        username = self.cleaned_data.get("username")
        ip = client_ip(self.request) if self.request is not None else None
        # Checked before authenticating, so a correct password gets in no sooner than a wrong one.
        if ratelimit.login_blocked(username=username, ip=ip):
            self.rate_limited = True
            minutes = math.ceil(settings.LOGIN_RATE_LIMIT["window_seconds"] / 60)
            raise ValidationError(self.error_messages["rate_limited"], code="rate_limited", params={"minutes": minutes})
        try:
            cleaned = super().clean()
        except ValidationError:
            ratelimit.login_failure_record(username=username, ip=ip)
            raise
        if self.user_cache is not None:
            ratelimit.login_failures_clear(username=username)
        return cleaned


class ApiTokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=TokenScope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[TokenScope.READ],
        help_text="Write includes read; admin includes both.",
    )
    project = forms.ModelChoiceField(
        queryset=Project.objects.none(),
        required=False,
        to_field_name="slug",
        empty_label="Every project I can reach",
        help_text="Limit the token to one project.",
    )
    expires_on = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        label="Expires on",
        help_text="Leave empty for a token that does not expire.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = selectors.project_list(user=user)

    def clean_expires_on(self) -> datetime.date | None:
        expires_on = self.cleaned_data.get("expires_on")
        if expires_on is not None and expires_on <= timezone.localdate():
            raise ValidationError("Pick a date after today.")
        return expires_on

    @property
    def expires_at(self) -> datetime.datetime | None:
        """The token stops working at the start of the chosen day, in the site's time zone."""
        expires_on = self.cleaned_data.get("expires_on")
        if expires_on is None:
            return None
        return timezone.make_aware(datetime.datetime.combine(expires_on, datetime.time.min))


class MembershipAddForm(forms.Form):
    username = forms.CharField(max_length=150, required=False)
    team = forms.ModelChoiceField(queryset=None, required=False, empty_label="—")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)

    def __init__(self, *args, project: Project, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = selectors.team_list(user=user).filter(organization_id=project.organization_id)

    def clean(self):
        cleaned = super().clean()
        username = (cleaned.get("username") or "").strip()
        team = cleaned.get("team")
        if self.errors:
            return cleaned
        if bool(username) == (team is not None):
            raise ValidationError("Give either a username or a team.")
        if username:
            member = User.objects.filter(username=username, is_active=True).first()
            if member is None:
                self.add_error("username", f"No active user is called '{username}'.")
            cleaned["member"] = member
        return cleaned


class MembershipRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
