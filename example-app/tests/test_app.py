"""The example service, tested through pytest-dockapp's public fixtures only."""

import pytest


def test_home(dockapp):
    assert dockapp.get("/").status_code == 200


def test_greeting(dockapp):
    assert dockapp.get("/").text == "Hello from the dockapp example!\n"


def test_health_reports_ok(dockapp):
    body = dockapp.get("/health").json()
    assert body["status"] == "ok"


def test_unknown_path_is_404(dockapp):
    assert dockapp.get("/nope").status_code == 404


def test_logs_show_the_listen_line(dockapp):
    assert "listening on 80" in dockapp.logs()


def test_visits_are_counted_in_redis(dockapp, dockapp_services):
    first = dockapp.post("/visits").json()["visits"]
    assert dockapp.post("/visits").json()["visits"] == first + 1
    code, out = dockapp_services["redis"].exec(["redis-cli", "get", "visits"])
    assert (code, out.strip()) == (0, str(first + 1))


@pytest.mark.dockapp_budget(size="500MB", ready="10s")
def test_the_image_and_its_start_stay_within_budget(dockapp):
    """The node base is about 395 MB; the app starts in well under a second here."""
