"""Repository-wide pytest set-up: analytics_queue's plugin, and the tests of the documentation.

Loaded through ``pytest11`` the plugin imports the package before pytest-cov starts measuring,
so the package's module-level lines would show as uncovered. ``addopts`` disables the entry
point (``-p no:analytics_queue``) and this file loads the same plugin after coverage starts.

Every ```python block of README.md and docs/**/*.md is a test (sybil), run as documented in
docs/contributing.md:

- Blocks of one page share a namespace, in page order. ``<!-- skip: next -->`` on the line before
  a block marks it illustrative: it is not run.
- Each page gets a capture server; ``POSTHOG_API_KEY`` and ``POSTHOG_HOST`` point at it while the
  page runs, so blocks that build an ``AnalyticsQueue`` from the environment send there.
- Each block starts without a default instance. After it, every ``AnalyticsQueue`` it built (the
  default instance and those of the Flask and Django integrations included) is shut down.
- A function ``test_*`` that a block defines is called after the block, like pytest would call
  it, with the fixtures it names: ``capture_server`` (a fresh `CaptureServer`), ``tmp_path``, and
  for Django blocks ``client`` (Django's test client, as pytest-django's fixture gives it).
- A block that imports django runs alone in a fresh interpreter configured with
  ``examples.django_app.settings`` (Django is configured once per process, and the integration
  tests configure it differently).
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sybil import Example, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser, SkipParser

pytest_plugins = ["analytics_queue.testing.plugin"]

ROOT = Path(__file__).resolve().parent
DOCS_API_KEY = "phc_docs_tests"
_HARNESS = "__docs_harness__"
_USES_DJANGO = re.compile(r"^\s*(from|import)\s+django\b", re.MULTILINE)


@contextmanager
def _fixture(name: str, example_path: str) -> Iterator[Any]:
    if name == "capture_server":
        from analytics_queue.testing import CaptureServer

        with CaptureServer() as server:
            yield server
    elif name == "tmp_path":
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
    elif name == "client":
        from django.test import Client

        yield Client()
    else:
        raise LookupError(f"{example_path}: a docs test asks for an unknown fixture {name!r}")


def _run_tests(namespace: dict[str, Any], before: dict[str, Any], path: str) -> None:
    """Call each ``test_*`` function the block defined, with the fixtures it names."""
    for name, value in list(namespace.items()):
        if not (name.startswith("test_") and callable(value)) or before.get(name) is value:
            continue
        with ExitStack() as stack:
            kwargs = {
                param: stack.enter_context(_fixture(param, path))
                for param in inspect.signature(value).parameters
            }
            value(**kwargs)


@contextmanager
def _queues_shut_down_after() -> Iterator[None]:
    """Every AnalyticsQueue built inside is shut down at the end.

    The block starts without a default instance (one left by an earlier test, maybe shut down,
    must not receive its events) and the previous one is put back afterwards.
    """
    import analytics_queue
    import analytics_queue._default
    from analytics_queue import AnalyticsQueue

    previous_default, analytics_queue._default._default = analytics_queue._default._default, None
    made: list[AnalyticsQueue] = []
    original: Callable[..., None] = AnalyticsQueue.__init__

    def recording_init(self: AnalyticsQueue, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    AnalyticsQueue.__init__ = recording_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        AnalyticsQueue.__init__ = original  # type: ignore[method-assign]
        for queue in made:
            queue.shutdown(timeout=2.0)
        analytics_queue._default._default = previous_default


# The child process of a Django block: the block's source comes on stdin.
_DJANGO_RUNNER = textwrap.dedent(
    """
    import os, sys
    os.environ["DJANGO_SETTINGS_MODULE"] = "examples.django_app.settings"
    import django
    django.setup()
    import conftest
    path, source = sys.argv[1], sys.stdin.read()
    namespace = {"__name__": "__docs__"}
    with conftest._queues_shut_down_after():
        exec(compile(source, path, "exec"), namespace)
        conftest._run_tests(namespace, {}, path)
    """
)


def _evaluate_in_django_process(example: Example) -> None:
    source = "\n" * (example.line + example.parsed.line_offset) + example.parsed
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    proc = subprocess.run(
        [sys.executable, "-c", _DJANGO_RUNNER, str(example.path)],
        input=source,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"the Django block failed:\n{proc.stdout}{proc.stderr}")


_python = PythonEvaluator()


def evaluate(example: Example) -> None:
    """Run one ```python block as described in this module's docstring."""
    if _USES_DJANGO.search(example.parsed):
        _evaluate_in_django_process(example)
        return
    before = dict(example.namespace)
    with _queues_shut_down_after():
        _python(example)
        _run_tests(example.namespace, before, str(example.path))


def setup(namespace: dict[str, Any]) -> None:
    """Per page: a capture server, and the environment pointing at it."""
    from analytics_queue.testing import CaptureServer

    saved = {k: v for k, v in os.environ.items() if k.startswith(("POSTHOG_", "ANALYTICS_QUEUE"))}
    for key in saved:
        del os.environ[key]
    server = CaptureServer()
    server.start()
    os.environ["POSTHOG_API_KEY"] = DOCS_API_KEY
    os.environ["POSTHOG_HOST"] = server.url
    namespace[_HARNESS] = (server, saved)
    namespace["__name__"] = "__docs__"


def teardown(namespace: dict[str, Any]) -> None:
    server, saved = namespace.pop(_HARNESS)
    server.stop()
    for key in [k for k in os.environ if k.startswith(("POSTHOG_", "ANALYTICS_QUEUE"))]:
        del os.environ[key]
    os.environ.update(saved)


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser(language="python", evaluator=evaluate), SkipParser()],
    patterns=["README.md", "docs/*.md", "docs/**/*.md"],
    setup=setup,
    teardown=teardown,
).pytest()
