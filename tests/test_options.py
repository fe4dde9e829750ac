"""Settings and options, engine-free."""

from __future__ import annotations

import pytest

from pytest_dockapp import cleanup, engine, plugin


@pytest.mark.parametrize(("age", "swept"), [("off", None), ("0", 0.0), ("90m", 5400.0)])
def test_the_crash_sweep_under_xdist_honours_an_explicit_sweep_age(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, age: str, swept: float | None
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(engine, "connect", lambda: object())
    monkeypatch.setattr(cleanup, "sweep", lambda client, session, max_age, **kw: calls.append(max_age))
    config = pytester.parseconfigure(f"--dockapp-sweep-age={age}")
    controller = plugin.XdistController(config.stash[plugin._STATE])
    controller.crashed = True
    controller.pytest_sessionfinish()
    controller.pytest_unconfigure()
    assert calls == ([] if swept is None else [swept])


def test_invalid_sweep_age_names_the_valid_forms(pytester: pytest.Pytester) -> None:
    with pytest.raises(pytest.UsageError, match="valid: off, 3600, 90m, 6h, 2d"):
        pytester.parseconfigure("--dockapp-sweep-age=soon")
