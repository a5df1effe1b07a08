"""Create the `admin` superuser once. Password from CONTROLPLANE_ADMIN_PASSWORD, else generated and printed."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin superuser if it does not exist."

    def handle(self, *args, **options):
        User = get_user_model()
        password = os.environ.get("CONTROLPLANE_ADMIN_PASSWORD")
        user = User.objects.filter(username="admin").first()
        if user is not None:
            if password:
                user.set_password(password)
                user.save(update_fields=["password"])
                self.stdout.write("admin exists; password set from CONTROLPLANE_ADMIN_PASSWORD")
            else:
                self.stdout.write("admin exists; password unchanged")
            return
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@example.com", password)
        if generated:
            self.stdout.write(self.style.SUCCESS(f"Created user admin with password: {password}"))
        else:
            self.stdout.write(self.style.SUCCESS("Created user admin (password from CONTROLPLANE_ADMIN_PASSWORD)"))
