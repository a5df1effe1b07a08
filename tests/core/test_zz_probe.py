import json
import pytest
from apps.core.models import Role, Job, AuditEvent, Worker
from apps.core import jobs
from django.utils import timezone
from tests.factories import TeamFactory

def show(label, r):
    body = r.content[:300]
    print(f"{label}: {r.status_code} {body!r}")

@pytest.mark.django_db
def test_probe(project, other_project, member_factory, client_for):
    admin = member_factory(Role.ADMIN)
    c = client_for(admin)
    team = TeamFactory(organization=project.organization)
    show("nul slug url", c.get("/api/v1/projects/%00/"))
    show("nul filter", c.get("/api/v1/projects/?organization=%00"))
    show("nul q", c.get("/api/v1/projects/?q=a%00b"))
    show("nul worker queue", c.get("/api/v1/workers/?queue=%00"))
    show("audit since bad", c.get("/api/v1/audit-events/?since=notadate"))
    show("audit since huge", c.get("/api/v1/audit-events/?since=99999-01-01"))
    show("audit since tz", c.get("/api/v1/audit-events/?since=0001-01-01T00:00:00%2B05:00"))
    show("page abc", c.get("/api/v1/jobs/?page=abc"))
    show("page big", c.get("/api/v1/jobs/?page=999999999999"))
    show("page_size -1", c.get("/api/v1/jobs/?page_size=-1"))
    show("ordering", c.get("/api/v1/jobs/?ordering=nonexistent"))
    show("membership user nul", c.post("/api/v1/memberships/", {"project": "alpha", "user": "\u0000", "role": "viewer"}, format="json"))
    show("membership project nul", c.post("/api/v1/memberships/", {"project": "\u0000", "user": "x", "role": "viewer"}, format="json"))
    show("membership team huge", c.post("/api/v1/memberships/", {"project": "alpha", "team": 10**30, "role": "viewer"}, format="json"))
    show("job params nul", c.post("/api/v1/jobs/", {"project": "alpha", "job_type": "core.device_check", "params": {"a": "\u0000"}}, format="json"))
    show("job params nul key", c.post("/api/v1/jobs/", {"project": "alpha", "job_type": "core.device_check", "params": {"\u0000": 1}}, format="json"))
    show("job huge gpu", c.post("/api/v1/jobs/", {"project": "alpha", "job_type": "core.device_check", "gpu_memory_mb": 10**30}, format="json"))
    show("job type nul", c.post("/api/v1/jobs/", {"project": "alpha", "job_type": "\u0000"}, format="json"))
    show("huge body", c.post("/api/v1/jobs/", {"project": "alpha", "job_type": "x" * (3 * 1024 * 1024)}, format="json"))
    show("array", c.post("/api/v1/jobs/", [1, 2], format="json"))
    show("string", c.post("/api/v1/jobs/", "abc", format="json"))
    show("malformed", c.post("/api/v1/jobs/", "{abc", content_type="application/json"))
    show("text", c.post("/api/v1/jobs/", "abc", content_type="text/plain"))
    show("token sa huge", c.post("/api/v1/tokens/", {"name": "x", "scopes": ["read"], "service_account": 10**30}, format="json"))
    show("token expires weird", c.post("/api/v1/tokens/", {"name": "x", "scopes": ["read"], "expires_at": "0001-01-01T00:00:00+05:00"}, format="json"))
    show("token scopes obj", c.post("/api/v1/tokens/", {"name": "x", "scopes": {"a": 1}}, format="json"))
    show("team members nul", c.patch(f"/api/v1/teams/{team.pk}/", {"members": ["\u0000"]}, format="json"))
    show("team huge url", c.patch(f"/api/v1/teams/{10**30}/", {"name": "x"}, format="json"))
    show("job url huge", c.post(f"/api/v1/jobs/{10**30}/cancel/", {}, format="json"))
    show("x-request", c.get("/api/v1/jobs/", HTTP_X_REQUEST_ID="abc"))
    show("anon", __import__("rest_framework.test").test.APIClient().get("/api/v1/jobs/"))
    print(c.get("/api/v1/jobs/", HTTP_X_REQUEST_ID="abc").headers)
    show("schema", c.get("/api/schema/"))
    show("docs", c.get("/api/docs/"))
    show("put audit", c.put("/api/v1/audit-events/1/", {}, format="json"))
    show("unknown route", c.get("/api/v1/nope/"))
    print(AuditEvent.objects.count(), Job.objects.count())
