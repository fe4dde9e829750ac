"""The Python example service, tested through pytest-dockapp's public fixtures only."""


def test_health_reports_ok(dockapp):
    assert dockapp.get("/health").json() == {"status": "ok"}


def test_hello_greets_the_world(dockapp):
    assert dockapp.get("/hello").json() == {"hello": "world"}
