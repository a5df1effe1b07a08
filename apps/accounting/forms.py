"""Forms of the accounting pages. They check shape; token_costs.py does the counting and pricing."""

from __future__ import annotations

from django import forms

MAX_TEXT = 1_000_000  # as POST tokens/count


class TokenCountForm(forms.Form):
    text = forms.CharField(
        max_length=MAX_TEXT,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "placeholder": "Paste a prompt or a document"}),
    )
    model = forms.CharField(
        required=False,
        max_length=200,
        label="Also price as",
        help_text="A model name from the price catalog, or a model registered in this project.",
        widget=forms.TextInput(attrs={"list": "token-models", "autocomplete": "off", "placeholder": "e.g. gpt-4o"}),
    )
    version = forms.TypedChoiceField(
        required=False,
        coerce=int,
        empty_value=None,
        label="Also count with",
        help_text="The tokenizer of a registered model version.",
    )

    def __init__(self, *args, versions: list[tuple[int, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.versions = dict(versions)
        self.fields["version"].choices = [("", "No registered tokenizer"), *versions]
