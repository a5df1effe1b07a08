"""Idempotent demo data: one organization, two projects (one is `demo`), users with different roles, a team."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.core import jobs, services
from apps.core.models import Job, Membership, Organization, Project, Role, Team
from apps.deployments.demo import seed_deployments
from apps.registry.demo import seed_registry

DEMO_USERS = {
    # username: {project slug: role}
    "alice": {"demo": Role.ADMIN, "research": Role.VIEWER},
    "bob": {"demo": Role.DEVELOPER},
    "carol": {"demo": Role.VIEWER, "research": Role.MAINTAINER},
    "dave": {"research": Role.ADMIN},
}


class Command(BaseCommand):
    help = "Load demo data (safe to run repeatedly)."

    @transaction.atomic
    def handle(self, *args, **options):
        User = get_user_model()
        admin = User.objects.get(username="admin")
        org = Organization.objects.filter(slug="acme").first() or services.organization_create(
            user=admin, name="Acme AI", slug="acme"
        )
        projects = {}
        for slug, name, description in [
            ("demo", "Demo", "A sandbox project with demo data."),
            ("research", "Research", "Experiments and evaluation of candidate models."),
        ]:
            projects[slug] = Project.objects.filter(slug=slug).first() or services.project_create(
                user=admin, organization=org, name=name, slug=slug, description=description
            )

        password = os.environ.get("CONTROLPLANE_DEMO_PASSWORD", "demo-password-42")
        for username, roles in DEMO_USERS.items():
            user, created = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
            if created:
                user.set_password(password)
                user.save(update_fields=["password"])
            for slug, role in roles.items():
                if not Membership.objects.filter(project=projects[slug], user=user).exists():
                    services.membership_create(user=admin, project=projects[slug], member=user, role=role)

        team = Team.objects.filter(organization=org, slug="ml-platform").first() or services.team_create(
            user=admin,
            organization=org,
            name="ML platform",
            slug="ml-platform",
            members=User.objects.filter(username__in=["bob", "dave"]),
        )
        if not Membership.objects.filter(project=projects["research"], team=team).exists():
            services.membership_create(user=admin, project=projects["research"], team=team, role=Role.DEVELOPER)

        if not Job.objects.filter(project=projects["demo"]).exists():
            jobs.job_create(
                user=admin,
                project=projects["demo"],
                job_type="core.device_check",
                params={"size": 512, "iterations": 50},
            )
        seeded = seed_registry(admin, projects["demo"])
        self.stdout.write(f"Registry: {', '.join(f'{name}:{v.number} ({v.status})' for name, v in seeded.items())}")
        deployments = seed_deployments(admin, projects["demo"], seeded)
        self.stdout.write(f"Deployments (served by the gpu worker): {', '.join(d.slug for d in deployments)}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data ready: organization 'acme', projects 'demo' and 'research'; users "
                f"{', '.join(DEMO_USERS)} (password: {password})"
            )
        )
