"""Starting the session's image and app early, in the background, once collection shows that a
test needs them: the engine work overlaps pytest's own (its collection report, the tests that
need no app), instead of starting at the first test that asks.

Only the settings' own fixtures are trusted for this: when a ``conftest.py`` overrides one of
them (its value is known only when the fixture runs), nothing starts early. A fixture that
finds the early work done for the same spec takes it; any other asks the library as before.
Errors surface in the fixture that takes the result, exactly as if it had done the work.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_dockapp.plugin_state import PluginState
    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.run.manager import BuildSpec, Image
    from pytest_dockapp.run.options import AppOptions

#: The fixtures whose values the early start assumes; an override by a conftest.py turns it off.
TRUSTED = (
    "dockapp",
    "dockapp_image",
    "dockapp_compose",
    "dockapp_context",
    "dockapp_dockerfile",
    "dockapp_build_args",
    "dockapp_target",
    "dockapp_port",
    "dockapp_health_path",
    "dockapp_timeout",
    "dockapp_ready",
)


def _ours(item: pytest.Item) -> bool:
    """Whether every trusted fixture the item can see is the plugin's own definition."""
    info = getattr(item, "_fixtureinfo", None)  # pytest's, since 3.0; without it, do nothing early
    if info is None:
        return False
    for name in TRUSTED:
        defs = info.name2fixturedefs.get(name) or ()
        if defs and getattr(defs[-1].func, "__module__", "") != "pytest_dockapp.fixtures":
            return False
    return True


class Prestart:
    """The session image (and app, if a test asks for ``dockapp``), started in a daemon thread."""

    def __init__(self, state: PluginState, spec: BuildSpec | None, app_options: AppOptions | None):
        self.state = state
        self.spec = spec  # None: the prebuilt --dockapp-image
        self.app_options = app_options
        self.image: Image | None = None
        self.app: DockApp | None = None
        self.image_error: BaseException | None = None
        self.app_error: BaseException | None = None
        self.taken = False
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dockapp-prestart", daemon=True)

    @classmethod
    def for_items(cls, state: PluginState, items: Sequence[pytest.Item]) -> Prestart | None:
        """A started prestart if some test needs the session image, else None (nothing is paid)."""
        if hasattr(state.config, "workerinput"):
            # An xdist worker collects every test but runs only those it is sent, later: it cannot
            # tell at collection whether any of its tests needs the app (trust III: each worker
            # started one, and one with no app test only paid for it).
            return None
        wanted = [i for i in items if {"dockapp", "dockapp_image"} & set(getattr(i, "fixturenames", ()))]
        if state.settings.compose:
            return None  # a stack starts when its fixture is first asked for
        if not wanted or not all(_ours(i) for i in wanted):
            return None
        from pytest_dockapp.run.manager import BuildSpec  # requests and the library: only for a session that needs them

        s = state.settings
        spec = None if s.image else BuildSpec(str(s.context), s.dockerfile, s.build_args, s.target, s.secrets)
        app = None
        # A reused app is attached to, not started: only its image's reuse check runs early.
        if any("dockapp" in getattr(i, "fixturenames", ()) for i in wanted) and not state.reuse_status()[0]:
            from pytest_dockapp.run.options import AppOptions

            app = AppOptions.of(port=s.port, health_path=s.health_path, timeout=s.timeout, ready=s.ready)
        early = cls(state, spec, app)
        state.progress.attached = False  # its events are kept until a fixture waits for it
        early._thread.start()
        return early

    def _run(self) -> None:
        try:
            self.state.connect()
            apps = self.state.started
            if apps is None or self._cancelled.is_set():
                return  # no engine: the fixture says so (skip or strict failure)
            try:
                prebuilt = str(self.state.settings.image)
                self.image = apps.prebuilt(prebuilt) if self.spec is None else apps.image(self.spec)
            except BaseException as exc:
                self.image_error = exc
                return
            finally:
                self.state.progress.settle()
            if self.app_options is not None:
                kw = self.app_options
                how = f"dockapp_ready = {kw.ready}" + (f", GET {kw.health_path}" if kw.health_path else "")
                self.state.progress.phase(f"waiting for the app to start and be ready ({how}; {self.image.name})")
                try:
                    self.app = apps.start(self.image, self.app_options)
                except BaseException as exc:
                    self.app_error = exc
        finally:
            self._done.set()

    #: How long the session's end waits for the early work to stop. A BuildKit build stops at
    #: once; a classic build cannot be stopped from here, but creates no container, and after
    #: :meth:`cancel` nothing else is created.
    CANCEL_WAIT = 10.0

    def cancel(self) -> None:
        """At the session's end: stop the early work and wait for its thread, so that it creates
        nothing more and removes its temporary files (a daemon thread dies with the interpreter
        wherever it is: trust III found its containers left in state Created)."""
        self._cancelled.set()
        apps = self.state.started
        if apps is not None:
            apps.cancel()
        self._done.wait(self.CANCEL_WAIT)

    def wait(self) -> None:
        """Until the early work ends; the live build progress is shown meanwhile."""
        self.state.progress.attach()
        while not self._done.wait(0.1):  # short waits: Ctrl-C and SIGTERM reach the main thread
            pass

    def take_image(self, spec: BuildSpec | None) -> Image | None:
        """The early image if ``spec`` is the one it was started for (else None); its error if it failed."""
        same = (spec is None and self.spec is None) or (
            spec is not None and self.spec is not None and spec.key() == self.spec.key()
        )
        if not same:
            return None
        self.wait()
        if self.image_error is not None:
            raise self.image_error
        return self.image

    def take_app(self, image: Image | str, options: AppOptions) -> DockApp | None:
        """The early app if it runs ``image`` with ``options`` (else None); its error if it failed."""
        if self.taken or self.app_options != options or self.image is not image:
            return None
        self.wait()
        self.taken = True
        if self.app_error is not None:
            raise self.app_error
        return self.app
