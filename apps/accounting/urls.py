"""Accounting pages, under /p/<project>/: spend, and the token counter. The API's names live in "accounting-api"."""

from django.urls import path

from . import views

urlpatterns = [
    path("p/<slug:project_slug>/spend/", views.spend_page, name="spend"),
    path("p/<slug:project_slug>/tokens/", views.token_page, name="spend-tokens"),
]
