"""Every bad value a user can give is one usage error at start that names the setting and the
rule: never a traceback, never a skip, never an engine error later (engine-free)."""

from __future__ import annotations

import pytest

from .helpers import HOME_TEST


def _usage_error(pytester: pytest.Pytester, *args: str) -> str:
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest_subprocess(*args)
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    return text


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--dockapp-budget-layers", "abc", "dockapp budget layers (--dockapp-budget-layers): 'abc' is not a number"),
        ("--dockapp-budget-layers", "1.5", "'1.5' is not a number of layers"),
        ("--dockapp-budget-layers", "1e99", "'1e99' is not a number of layers"),
        ("--dockapp-budget-layers", "-1", "'-1' is not a number of layers"),
        ("--dockapp-budget-wasted", "x%", "dockapp budget wasted (--dockapp-budget-wasted): 'x%' is not a share"),
        ("--dockapp-budget-wasted", "%", "'%' is not a share of the image"),
        ("--dockapp-budget-wasted", "-5%", "'-5%' is not a share of the image"),
        ("--dockapp-timeout", "1e99", "dockapp timeout (--dockapp-timeout): '1e99' is not a timeout from 0.1 to 86400"),
        ("--dockapp-timeout", "inf", "'inf' is not a timeout"),
        ("--dockapp-timeout", "1e-9", "'1e-9' is not a timeout"),
        ("--dockapp-timeout", "nan", "'nan' is not a timeout"),
        ("--dockapp-sweep-age", "nan", "dockapp sweep age (--dockapp-sweep-age): 'nan' is not an age"),
        ("--dockapp-sweep-age", "inf", "'inf' is not an age"),
        ("--dockapp-image", "UPPER/Case:tag", "dockapp image (--dockapp-image): 'UPPER/Case:tag' is not a valid image"),
        ("--dockapp-cache-from", "Not A Ref!!", "dockapp cache from (--dockapp-cache-from): 'Not A Ref!!' is not"),
        ("--dockapp-cache-to", "127.0.0.1:5520/h2app:one:two", "'127.0.0.1:5520/h2app:one:two' is not a valid"),
        ("--dockapp-cache-to", "127.0.0.1:5520/h2app:cache-42/merge", "*a tag of at most 128*(no /*"),
    ],
)
def test_a_bad_value_is_a_usage_error_that_names_the_setting(
    pytester: pytest.Pytester, option: str, value: str, said: str
) -> None:
    text = _usage_error(pytester, f"{option}={value}")
    assert said.strip("*").split("*")[0] in text, text


def test_a_bad_cache_ref_in_the_environment_names_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The GitHub recipe's old `cache-${{ github.ref_name }}` on a pull request: `42/merge`.
    monkeypatch.setenv("DOCKAPP_CACHE_FROM", "127.0.0.1:5999/app:cache-42/merge 127.0.0.1:5999/app:cache-main")
    text = _usage_error(pytester)
    assert "dockapp cache from (DOCKAPP_CACHE_FROM): '127.0.0.1:5999/app:cache-42/merge' is not a valid" in text


def test_a_bad_label_entry_is_a_usage_error_not_a_skip_for_no_engine(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKAPP_LABELS", "a=b,noequals")
    text = _usage_error(pytester)
    assert "DOCKAPP_LABELS entry 'noequals' is not KEY=VALUE" in text
    assert "no engine" not in text


@pytest.mark.parametrize(
    ("marker", "said"),
    [
        ('layers="abc"', "'abc' is not a number of layers"),
        ("layers=1.5", "1.5 is not a number of layers"),
        ("layers=-1", "-1 is not a number of layers"),
        ('wasted="x%"', "'x%' is not a share of the image"),
        ('wasted="-5%"', "'-5%' is not a share of the image"),
    ],
)
def test_a_bad_budget_in_a_marker_fails_the_test_with_the_rule(
    pytester: pytest.Pytester, marker: str, said: str
) -> None:
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.dockapp_budget({marker})\ndef test_small():\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert said in text and "ValueError" not in text and "Traceback" not in text, text
