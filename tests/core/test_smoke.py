from apps.core.models import Role


def test_member_lists_own_project_only(project, other_project, member_factory, client_for):
    alice = member_factory(Role.VIEWER)
    response = client_for(alice, scopes=["read"]).get("/api/v1/projects/")
    assert response.status_code == 200
    assert [p["slug"] for p in response.json()["results"]] == ["alpha"]
