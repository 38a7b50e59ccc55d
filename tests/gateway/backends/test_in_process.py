"""What every in-process model shares (``gateway/backends/in_process.py``): the background load's three states as
``/ready`` and a request see them, and the bound on admitted work."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.backends.in_process import BoundedWork, LoadedModel
from gateway.core.errors import OverloadedError, UpstreamUnavailableError


def test_a_model_is_loading_then_loaded_and_start_does_not_wait_for_it() -> None:
    release = threading.Event()

    def load() -> str:
        release.wait(5)
        return "weights"

    async def scenario() -> None:
        loaded = LoadedModel("local model", "tiny", load)
        loaded.start()  # returns at once: the server listens while the weights load
        assert loaded.readiness() == (False, "loading")
        with pytest.raises(UpstreamUnavailableError, match="local model 'tiny' is still loading; retry shortly"):
            _ = loaded.model
        release.set()
        await loaded.wait()
        assert loaded.readiness() == (True, "loaded") and loaded.model == "weights"

    asyncio.run(scenario())


def test_a_failed_load_is_reported_for_good_and_named_in_every_503() -> None:
    def load() -> str:
        raise OSError("no such file: /models/tiny")

    async def scenario() -> None:
        loaded = LoadedModel("speech model", "whisper", load)
        loaded.start()
        await loaded.wait()
        ready, detail = loaded.readiness()
        assert not ready and detail == "failed to load: OSError: no such file: /models/tiny"
        with pytest.raises(UpstreamUnavailableError) as raised:
            _ = loaded.model
        assert raised.value.status_code == 503
        assert raised.value.message == "speech model 'whisper' failed to load: OSError: no such file: /models/tiny"

    asyncio.run(scenario())


def test_work_beyond_concurrency_plus_queue_is_refused_until_a_slot_frees() -> None:
    work = BoundedWork("tiny", max_concurrency=1, max_queue=1, unit="clips")
    work.admit()
    work.admit()
    with pytest.raises(OverloadedError, match="model 'tiny' is busy: 2 clips running or queued"):
        work.admit()
    work.release()
    work.admit()
    assert work.admitted == 2
