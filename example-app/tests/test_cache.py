"""The layer order keeps dependency installs cached when only the sources change."""

import pytest


@pytest.mark.dockapp_cache(change=["server.js"], cached=["RUN npm install"])
def test_editing_server_js_keeps_npm_install_cached(dockapp_cache_report):
    assert dockapp_cache_report.step("COPY . /app").cached is False


@pytest.mark.dockapp_cache
def test_rebuild_without_changes_is_fully_cached():
    pass
