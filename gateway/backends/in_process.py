"""What every in-process model shares: a background load, and a bounded amount of admitted work.

**Loading.** ``start`` returns at once and the weights load on a worker thread, so the server starts listening and
several models load side by side. Until the load is done ``/ready`` says ``loading`` and a request gets a 503
("still loading; retry shortly"); a load that fails is logged once with its traceback, ``/ready`` says ``failed to
load: <error>`` for good, and every request gets a 503 naming the model and the error. Nothing crashes the server at
start: one broken model leaves the others serving.

**Admission.** A model runs ``max_concurrency`` requests at once and holds at most ``max_queue`` more; one beyond
that is refused at once (503 ``overloaded``, retry later) instead of waiting without bound. A slot is taken
when work is admitted and freed when the worker is really done, not when the client stops listening (a cancelled
request's generation still holds its worker until it stops).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from gateway.core.errors import OverloadedError, UpstreamUnavailableError

Model = TypeVar("Model")

logger = logging.getLogger(__name__)


class LoadedModel(Generic[Model]):
    """What ``load`` returns (called on a worker thread), once it has; ``what`` names the kind in errors
    (e.g. ``local model``)."""

    def __init__(self, what: str, name: str, load: Callable[[], Model]) -> None:
        self.what, self.name, self._load = what, name, load
        self._model: Model | None = None
        self._error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"load-{self.name}")

    async def _run(self) -> None:
        try:
            self._model = await asyncio.to_thread(self._load)
        except Exception as exc:  # reported by /ready and to every request
            logger.exception("loading %s '%s' failed", self.what, self.name)
            self._error = f"{type(exc).__name__}: {exc}"

    async def wait(self) -> None:
        """Until the load has ended, loaded or failed."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def readiness(self) -> tuple[bool, str]:
        if self._model is not None:
            return True, "loaded"
        if self._error:
            return False, f"failed to load: {self._error}"
        return False, "loading"

    @property
    def loaded(self) -> Model | None:
        return self._model

    @property
    def model(self) -> Model:
        """The loaded model; a 503 naming the model while it loads or after its load failed."""
        if self._model is None:
            if self._error:
                raise UpstreamUnavailableError(f"{self.what} '{self.name}' failed to load: {self._error}")
            raise UpstreamUnavailableError(f"{self.what} '{self.name}' is still loading; retry shortly")
        return self._model

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class BoundedWork:
    """Counts the admitted work of one model against ``max_concurrency + max_queue`` (see the module docstring);
    ``unit`` names the work in the refusal (requests, clips)."""

    def __init__(self, name: str, max_concurrency: int, max_queue: int, unit: str = "requests") -> None:
        self.name, self.unit = name, unit
        self.capacity = max_concurrency + max_queue
        self.admitted = 0

    def admit(self) -> None:
        if self.admitted >= self.capacity:
            raise OverloadedError(f"model '{self.name}' is busy: {self.admitted} {self.unit} running or queued; "
                                  "retry later")
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1
