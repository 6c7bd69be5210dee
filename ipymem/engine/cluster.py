"""The memory of every Dask worker while a statement runs: ``start(client)`` -> handle; ``handle.stop()``.

How it measures, per worker process (each worker is its own process, so its
own RSS and its own kernel high-water mark):

* ``start``: one ``client.run`` call reads each worker's RSS (the baseline)
  and, on Linux, resets its high-water mark (writes ``5`` to the worker's
  ``/proc/self/clear_refs``), exactly as the kernel's own measurement does.
  Then a thread (``ipymem-cluster``) asks the *scheduler*, not the workers,
  for the memory the workers reported in their heartbeats, every
  ``interval`` seconds (0.5 s by default): the timeline of the live chart,
  and the fallback peak where no high-water mark can be reset.  The workers
  are never polled while the statement runs.
* ``stop``: one more ``client.run`` reads each worker's ``VmHWM`` (its exact
  peak since the reset: a 300 MiB spike of 50 ms cannot hide), its RSS (the
  end), its name and Dask's managed bytes (so the managed / unmanaged split
  is of this moment, not of the last heartbeat).  Workers are matched by
  address and process id, so a worker that left, joined, or was restarted
  by its nanny (same name, new process) is reported as such.

So the statement waits for two ``client.run`` round trips (a few ms each on
one machine); the scheduler is asked only from the background thread (and
once at the end if a worker could not give its own name and managed bytes).

The functions sent to the workers are closures, which cloudpickle sends by
value: the workers need neither ipymem nor anything else installed, and
nothing stays behind on them (no plugin, no thread, no import).

Faults: every call to the cluster has a bounded timeout (``timeout``, 5 s
by default); a failed call is recorded as a note and never raises, so an
unreachable scheduler or a closed client leaves the kernel's measurement
intact.

Overlapping measurements (a ``%memit`` inside a ``%memwatch`` cell) share
each worker's high-water mark, as kernel measurements share the kernel's:
before a reset, the value it is about to erase is folded into every handle
still open, so each keeps an exact peak.

This module imports no IPython and not ``distributed`` itself: it uses the
client it is given, and finds the default client only when ``distributed``
was already imported by the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..models.cluster import (
    JOINED,
    LEFT,
    OK,
    RESTARTED,
    UNREACHABLE,
    ClusterSample,
    WorkerMemory,
)
from .sampler import THREAD_PREFIX

#: Peak methods of :class:`~ipymem.models.cluster.WorkerMemory`.
WORKER_HWM = "worker's kernel high-water mark (VmHWM, reset and read through client.run)"
WORKER_SAMPLED = "sampled from the scheduler's heartbeats (a lower bound: spikes between heartbeats are missed)"
WORKER_LIFETIME_HWM = "worker's lifetime high-water mark (VmHWM; the process started during the statement)"

#: Seconds any single call to the cluster may take.
TIMEOUT = 5.0
#: Seconds between two scheduler readings for the timeline.
INTERVAL = 0.5

_open: list[ClusterHandle] = []
_open_lock = threading.Lock()


def default_client() -> Any | None:
    """The user's running default ``distributed.Client``, or ``None``.

    ``distributed`` is imported by whoever made a client; if it is not in
    ``sys.modules``, no client can exist and nothing is imported.
    """
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        client = distributed.default_client()
    except Exception:  # ValueError: no client; anything else: not usable either
        return None
    return client if is_running_client(client) else None


def is_client(obj: Any) -> bool:
    """Duck typing for a ``distributed.Client`` (no import of distributed)."""
    return all(callable(getattr(obj, name, None)) for name in ("run", "sync", "scheduler_info"))


def is_running_client(obj: Any) -> bool:
    return is_client(obj) and getattr(obj, "status", "running") == "running"


def _worker_reader() -> Callable[[bool], dict[str, Any]]:
    """The function run on each worker (a closure, so cloudpickle sends it by value: nothing to install).

    Reads the worker process's RSS and, on Linux, its ``VmHWM``; with
    ``reset`` also resets that high-water mark afterwards.  Also Dask's
    managed bytes now (what its heartbeat would report next, without waiting
    for it).  Standard library only, except psutil (a dependency of
    distributed) off Linux.
    """

    def ipymem_read_memory(reset: bool, dask_worker: Any = None) -> dict[str, Any]:
        import os
        import sys
        import time

        out: dict[str, Any] = {"pid": os.getpid(), "reset": False, "time": time.time()}
        try:  # the names distributed's own heartbeat reads (Worker.get_metrics)
            out["name"] = str(dask_worker.name)
            out["managed"] = int(dask_worker.state.nbytes)
            try:
                out["spilled"] = int(dask_worker.data.spilled_total[1])
            except AttributeError:  # spilling is disabled
                out["spilled"] = 0
        except Exception:
            pass
        if sys.platform.startswith("linux"):
            try:
                with open("/proc/self/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"VmRSS:"):
                            out["rss"] = int(line.split()[1]) * 1024
                        elif line.startswith(b"VmHWM:"):
                            out["hwm"] = int(line.split()[1]) * 1024
                if reset:
                    with open("/proc/self/clear_refs", "w") as f:
                        f.write("5")
                    out["reset"] = True
            except (OSError, ValueError, IndexError):
                pass
        if "rss" not in out:
            import psutil

            out["rss"] = psutil.Process().memory_info().rss
        return out

    return ipymem_read_memory


class ClusterHandle:
    """A measurement of every worker, started by :func:`start`; :meth:`stop` returns the figures.

    ``clock`` gives the timeline's seconds (pass the kernel sampler's
    ``elapsed`` so the cluster series shares the kernel's time axis).
    """

    def __init__(
        self,
        client: Any,
        *,
        timeout: float = TIMEOUT,
        interval: float = INTERVAL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.interval = interval
        t0 = time.perf_counter()
        self.clock = clock or (lambda: time.perf_counter() - t0)
        self.notes: list[str] = []
        self.samples: list[ClusterSample] = []
        self.calls = 0
        self.call_seconds = 0.0
        self._baseline: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}
        self._seen: dict[str, int] = {}  # address -> highest RSS any heartbeat reported
        self._folded: dict[tuple[str, int], int] = {}  # (address, pid) -> peak folded in by others' resets
        self._unread: dict[str, str] = {}  # address -> why it did not answer at the start
        self._reader = _worker_reader()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.reachable = True
        self.stopped = False

    # -- calls to the cluster, each bounded ------------------------------------
    def _call(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``func(..., callback_timeout=timeout)`` (a client method); ``None`` and a note on any failure."""
        t0 = time.perf_counter()
        try:
            return func(*args, callback_timeout=self.timeout, **kwargs)
        except (Exception, asyncio.CancelledError) as exc:
            self._fail(what, exc)
            return None
        finally:
            self.calls += 1
            self.call_seconds += time.perf_counter() - t0

    def _fail(self, what: str, exc: BaseException) -> None:
        self.reachable = False
        name = type(exc).__name__
        text = f"{name}: {exc}" if str(exc) else name
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            text = f"no answer within {self.timeout:g} s"
        note = f"Dask cluster not measured ({what} failed: {text}); the kernel's figures are unaffected"
        with self._lock:
            if not any(n.startswith("Dask cluster not measured") for n in self.notes):
                self.notes.append(note)

    def _run_on_workers(self, what: str, reset: bool) -> dict[str, Any] | None:
        """``{address: reading or exception}`` from every worker the scheduler knows, or ``None``."""
        if getattr(self.client, "status", "running") != "running":
            self._fail(what, RuntimeError(f"the client is {self.client.status}"))
            return None
        return self._call(what, self.client.run, self._reader, reset, on_error="return")

    def _identity(self, what: str) -> dict[str, Any] | None:
        if getattr(self.client, "status", "running") != "running":
            self._fail(what, RuntimeError(f"the client is {self.client.status}"))
            return None
        return self._call(what, self.client.sync, self.client.scheduler.identity, n_workers=-1)

    # -- lifecycle ----------------------------------------------------------------
    def _start(self) -> None:
        readings = self._run_on_workers("reading the workers", reset=True)
        if readings is None:
            return
        with _open_lock:
            for address, reading in readings.items():
                if not isinstance(reading, dict):
                    self._unread[address] = _text(reading)
                    continue
                self._baseline[address] = reading
                if reading.get("reset") and "hwm" in reading:
                    for other in _open:  # the high-water mark we just erased belongs to them too
                        other._fold(address, reading["pid"], reading["hwm"])
            _open.append(self)
        self._absorb_readings(readings)
        self._thread = threading.Thread(target=self._sample, name=THREAD_PREFIX + "cluster", daemon=True)
        self._thread.start()

    def _fold(self, address: str, pid: int, value: int) -> None:
        key = (address, pid)
        with self._lock:
            self._folded[key] = max(self._folded.get(key, 0), value)

    def _absorb_readings(self, readings: dict[str, Any]) -> None:
        """Names, and a timeline point of the workers' exact RSS, from a ``client.run`` answer."""
        ok = [r for r in readings.values() if isinstance(r, dict)]
        with self._lock:
            for address, r in readings.items():
                if isinstance(r, dict) and "name" in r:
                    self._names[address] = r["name"]
            if ok:
                rss = [r["rss"] for r in ok]
                self.samples.append(ClusterSample(round(self.clock(), 4), sum(rss), max(rss)))

    def _absorb(self, info: dict[str, Any]) -> None:
        """Names, and each worker's heartbeat RSS, from a scheduler identity."""
        workers = info.get("workers") or {}
        total = highest = 0
        with self._lock:
            for address, w in workers.items():
                self._names[address] = str(w.get("name", ""))
                metrics = w.get("metrics") or {}
                rss = int(metrics.get("memory") or 0)
                # A heartbeat counts towards a worker's peak only if the worker sent it after its
                # baseline (both times from the worker's own clock): an older one may show memory
                # freed before the statement started.
                base = self._baseline.get(address)
                if base is None or float(metrics.get("time") or 0) >= base.get("time", 0):
                    self._seen[address] = max(self._seen.get(address, 0), rss)
                total += rss
                highest = max(highest, rss)
            if workers:
                self.samples.append(ClusterSample(round(self.clock(), 4), total, highest))
                del self.samples[:-4096]

    def _sample(self) -> None:
        while not self._stop.is_set():
            info = self._identity("sampling the scheduler")
            if info is None:
                return  # unreachable: stop asking rather than pile up timeouts
            self._absorb(info)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, WorkerMemory]:
        """Stop sampling and read every worker's peak and end; ``{address: figures}``.  Idempotent."""
        if self.stopped:
            return self.workers
        self.stopped = True
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.timeout + 1.0)  # each of its calls is bounded by the timeout
        with _open_lock:
            if self in _open:
                _open.remove(self)
        self.workers: dict[str, WorkerMemory] = {}
        if not self._baseline:
            return self.workers
        after = self._run_on_workers("reading the workers", reset=False) if self.reachable else None
        final = None
        if after is not None:
            self._absorb_readings(after)
            # The workers gave their names and managed bytes themselves; ask the scheduler only if not.
            if any(not isinstance(r, dict) or "managed" not in r or "name" not in r for r in after.values()):
                final = self._identity("asking the scheduler")
                if final is not None:
                    self._absorb(final)
        self.workers = self._figures(after, (final or {}).get("workers") or {})
        return self.workers

    # -- figures ----------------------------------------------------------------
    def _figures(self, after: dict[str, Any] | None, final: dict[str, Any]) -> dict[str, WorkerMemory]:
        out: dict[str, WorkerMemory] = {}
        after_ok = {a: r for a, r in (after or {}).items() if isinstance(r, dict)}
        gone_by_name = {}
        for address, base in self._baseline.items():
            name = self._names.get(address, "")
            now = after_ok.get(address)
            if after is None or (address in after and now is None):
                error = "" if after is None else f" ({_text(after[address])})"
                seen = self._seen.get(address)
                out[address] = WorkerMemory(
                    address,
                    name,
                    baseline=base["rss"],
                    peak=max(base["rss"], seen) if seen is not None else None,
                    method=WORKER_SAMPLED,
                    status=UNREACHABLE,
                    pid=base["pid"],
                    detail=(
                        f"{'the cluster' if after is None else 'the worker'} did not answer at the end{error}; "
                        "peak is at least the heartbeats seen"
                    ),
                )
            elif now is not None and now["pid"] == base["pid"]:
                out[address] = self._measured(address, name, base, now, final.get(address))
            else:
                gone_by_name[name] = address
                peak = max(base["rss"], self._seen.get(address, 0))
                out[address] = WorkerMemory(
                    address,
                    name,
                    baseline=base["rss"],
                    peak=peak,
                    method=WORKER_SAMPLED,
                    status=LEFT,
                    pid=base["pid"],
                    detail="the worker process ended during the statement: peak is at least the heartbeats seen",
                )
        for address, now in after_ok.items():
            if address in out:
                continue
            if address in self._unread:  # there all along, but it did not answer at the start
                out[address] = WorkerMemory(
                    address,
                    str(now.get("name", "")),
                    end=now["rss"],
                    method=WORKER_SAMPLED,
                    status=UNREACHABLE,
                    pid=now["pid"],
                    detail=f"the worker did not answer at the start ({self._unread[address]}): no baseline",
                )
                continue
            name = str(now.get("name", (final.get(address) or {}).get("name", self._names.get(address, ""))))
            managed, unmanaged = _split(final.get(address), now)
            restarted_from = gone_by_name.get(name) if name else None
            if restarted_from is not None:
                old = out[restarted_from]
                out[restarted_from] = _replace(
                    old, status=RESTARTED, detail=f"worker {name!r} restarted during the statement, now at {address}"
                )
            out[address] = WorkerMemory(
                address,
                name,
                baseline=None,
                peak=max(now.get("hwm", 0), now["rss"]) if "hwm" in now else now["rss"],
                end=now["rss"],
                method=WORKER_LIFETIME_HWM if "hwm" in now else WORKER_SAMPLED,
                status=RESTARTED if restarted_from is not None else JOINED,
                managed=managed,
                unmanaged=unmanaged,
                pid=now["pid"],
                detail=(
                    f"restarted worker {name!r} (was {restarted_from}); peak since its process started"
                    if restarted_from is not None
                    else "joined during the statement; peak since its process started"
                ),
            )
        return out

    def _measured(
        self, address: str, name: str, base: dict[str, Any], now: dict[str, Any], info: dict[str, Any] | None
    ) -> WorkerMemory:
        exact = base.get("reset") and "hwm" in now
        with self._lock:
            folded = self._folded.get((address, base["pid"]), 0)
        candidates = [base["rss"], now["rss"], self._seen.get(address, 0), folded]
        if exact:
            candidates.append(now["hwm"])
        managed, unmanaged = _split(info, now)
        return WorkerMemory(
            address,
            name,
            baseline=base["rss"],
            peak=max(candidates),
            end=now["rss"],
            method=WORKER_HWM if exact else WORKER_SAMPLED,
            status=OK,
            managed=managed,
            unmanaged=unmanaged,
            pid=base["pid"],
        )


def _split(info: dict[str, Any] | None, reading: dict[str, Any]) -> tuple[int | None, int | None]:
    """Dask's managed bytes (results held in memory) and the unmanaged rest of the worker's RSS.

    From the worker itself when it could tell (read with its RSS, so the two agree), else
    from the scheduler's last heartbeat.
    """
    rss = reading["rss"]
    if "managed" in reading:
        managed = max(reading["managed"] - reading.get("spilled", 0), 0)
        return managed, max(rss - managed, 0)
    metrics = (info or {}).get("metrics") or {}
    managed = metrics.get("managed_bytes")
    if managed is None:
        return None, None
    spilled = metrics.get("spilled_bytes") or {}
    managed = int(managed) - int(spilled.get("disk", 0) or 0) if isinstance(spilled, dict) else int(managed)
    managed = max(managed, 0)
    return managed, max(rss - managed, 0)


def _text(error: object) -> str:
    name = type(error).__name__
    return f"{name}: {error}" if str(error) else name


def _replace(worker: WorkerMemory, **changes: Any) -> WorkerMemory:
    import dataclasses

    return dataclasses.replace(worker, **changes)


def start(
    client: Any,
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    clock: Callable[[], float] | None = None,
) -> ClusterHandle:
    """Start measuring every worker of ``client``; never raises for a cluster fault (see the notes)."""
    handle = ClusterHandle(client, timeout=timeout, interval=interval, clock=clock)
    try:
        handle._start()
    except BaseException:
        with contextlib.suppress(Exception):
            handle.stop()
        raise
    return handle
