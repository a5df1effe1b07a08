"""Print a new API token for scripts: manage.py create_token --user U --project P --scopes read,write"""

import datetime

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.http import Http404
from django.utils import timezone

from apps.core.models import Project
from apps.core.permissions import PermissionDenied
from apps.core.services import api_token_create


class Command(BaseCommand):
    help = "Create an API token and print it (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True)
        parser.add_argument("--project", help="Project slug the token is limited to.")
        parser.add_argument("--scopes", default="read", help="Comma-separated: read, write, admin.")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--expires-days", type=int, help="Days until the token expires (default: never).")

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user '{options['user']}'.")
        project = None
        if options["project"]:
            project = Project.objects.filter(slug=options["project"]).first()
            if project is None:
                raise CommandError(f"No project '{options['project']}'.")
        expires_at = None
        if options["expires_days"]:
            expires_at = timezone.now() + datetime.timedelta(days=options["expires_days"])
        try:
            _, raw = api_token_create(
                user=user,
                name=options["name"],
                project=project,
                expires_at=expires_at,
                scopes=[s.strip() for s in options["scopes"].split(",") if s.strip()],
            )
        except (ValidationError, PermissionDenied) as exc:
            raise CommandError("; ".join(getattr(exc, "messages", [str(exc)])))
        except Http404:
            raise CommandError(f"User '{user}' is not a member of project '{options['project']}'.")
        self.stdout.write(raw)
