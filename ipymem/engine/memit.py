"""Peak and increment of memory while a callable runs.

For each run: the RSS baseline is read, the kernel's high-water mark is reset
(``clear_refs``), the sampler thread records the timeline, the callable runs,
and the peak is read back from the high-water mark.  No spike can hide from
that peak, however short; the sampler's maximum is kept as a lower bound and
as the fallback where the kernel offers no resettable high-water mark.

The Python heap (tracemalloc) peak is measured when asked for, or for free
when tracemalloc is already running.  tracemalloc's state is left exactly as
found: started and stopped by us only if it was off, frame count untouched,
and if the user was tracing, its peak is never reset (see :mod:`.peaks`).

Both peak counters are shared with the rest of the process: each run opens a
window on :data:`.peaks.rss_peaks` and :data:`.peaks.heap_peaks`, so a
measurement nested inside this one (or running in another thread) does not
take this one's peak away.

This module knows nothing of IPython: it takes a zero-argument callable.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable

from ..models import MemitParams, MemitResult, MemitRun, outcome_of
from . import peaks
from .interrupts import deferred_interrupts
from .probes import PEAK_HWM, PEAK_RU_MAXRSS, PEAK_SAMPLED, Probe, rss_note, shared_probe
from .rssparts import allocator_free, retained_hint, reuse_hint
from .sampler import Sampler, ThreadActivity


def memit(
    func: Callable[[], object],
    *,
    repeat: int = 1,
    timeout: float | None = None,
    interval: float = 0.01,
    include_children: bool = False,
    trace_heap: bool = False,
    collect: bool = True,
    statement: str = "",
    setup: str | None = None,
    probe: Probe | None = None,
    sampler: Sampler | None = None,
) -> tuple[MemitResult, BaseException | None]:
    """Run ``func`` ``repeat`` times and measure memory; never swallows the caller's exception.

    Returns ``(result, error)``.  ``error`` is the exception the callable
    raised (KeyboardInterrupt included), or ``None``; the caller re-raises it
    after showing ``result``, whose ``outcome`` says what happened and whose
    runs include the partial one.  ``timeout`` is a budget for the repeats:
    no new run starts once it is spent (a running statement is never cut
    short, which could leave user state half-updated).

    ``collect`` collects the young generations (0 and 1) once before the
    first baseline, so cyclic garbage left by the previous cells is not freed
    mid-measurement (which would make the increment read too low).  Not a
    full collection: that costs ~90 ms per million live objects (measured,
    3.11) on every call, and the garbage it alone would find has survived two
    collections already, so it is old and rarely large; the statement frees
    it mid-run only if it triggers a full collection itself, as it would
    without ipymem.  Garbage without cycles is freed at once by reference
    counting and never waits for a collection.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    probe = probe or shared_probe()
    params = MemitParams(
        repeat=repeat,
        timeout=timeout,
        interval=interval,
        include_children=include_children,
        trace_heap=trace_heap or tracemalloc.is_tracing(),
    )
    sampler = sampler or Sampler(probe, interval=interval, include_children=include_children)
    runs: list[MemitRun] = []
    methods: set[str] = set()
    error: BaseException | None = None
    timed_out = False
    acquired_heap = False
    ledger = peaks.ledger_for(probe)
    users_heap = params.trace_heap and peaks.heap_tracing.users_tracing()
    activity = ThreadActivity().start()
    sampler.activity = activity
    free_before: int | None = None
    try:
        # Inside the try, so an interrupt landing just after the deferral still reaches the finally.
        # gc.collect() is deferred too: an interrupt landing in a gc callback would be lost.
        with deferred_interrupts() as held:
            if params.trace_heap:
                peaks.heap_tracing.acquire()
                acquired_heap = True
            if collect:
                gc.collect(1)
            free_before = allocator_free()
        if held.received:
            raise KeyboardInterrupt
        budget_start = time.perf_counter()
        for i in range(repeat):
            if timeout is not None and i > 0 and time.perf_counter() - budget_start >= timeout:
                timed_out = True
                break
            run, method, error = _one_run(func, ledger, sampler, params.trace_heap)
            runs.append(run)
            methods.add(method)
            if error is not None:
                break
    except KeyboardInterrupt as exc:  # between runs, outside the user's code
        error = exc
    finally:
        with deferred_interrupts() as held:
            sampler.stop()
            if acquired_heap:
                peaks.heap_tracing.release()
        if held.received and error is None:
            error = KeyboardInterrupt()
    notes = []
    if PEAK_SAMPLED in methods and ledger is peaks.rss_peaks and not peaks.reset_hwm_allowed():
        notes.append(peaks.NO_RESET_NOTE)
    if users_heap and any(r.heap_peak is not None and not r.heap_exact for r in runs):
        notes.append(peaks.USER_HEAP_NOTE)
    sampler.activity = None
    others = activity.stop()
    if others:
        notes.append(
            f"{len(others)} other thread(s) ran during the measurement ({', '.join(others[:3])}"
            + (", ..." if len(others) > 3 else "")
            + "): RSS is the whole process's, so their memory is included"
        )
    if runs and free_before is not None:
        free_after = allocator_free() or 0
        retained = runs[-1].end - runs[0].baseline
        hint = retained_hint(retained, free_after - free_before) or reuse_hint(retained, free_before - free_after)
        if hint:
            notes.append(hint)
    if rss_note(probe):
        notes.append(rss_note(probe))
    if include_children and methods != {PEAK_SAMPLED}:
        notes.append("child processes are sampled: their share of the peak is a lower bound")
    if sampler.errors:
        notes.append(f"{sampler.errors} sampler readings failed")
    outcome, error_text = outcome_of(error)
    result = MemitResult(
        statement=statement,
        setup=setup,
        runs=tuple(runs),
        params=params,
        peak_method=_describe_methods(methods, interval),
        timeline=sampler.timeline.samples(),
        outcome=outcome,
        error=error_text,
        timed_out=timed_out,
        notes=tuple(notes),
    )
    return result, error


def _one_run(
    func: Callable[[], object], ledger: peaks.PeakLedger, sampler: Sampler, trace_heap: bool
) -> tuple[MemitRun, str, BaseException | None]:
    __tracebackhide__ = True  # a convention IPython (and pytest) honour: keep user tracebacks clean
    error: BaseException | None = None
    heap_baseline = heap_peak = None
    heap_exact = True
    heap_window = None
    count_before = sampler.timeline.count
    with deferred_interrupts() as held:
        # Start the thread first: its stack pages are ipymem's cost, not the statement's.
        sampler.start()
        sampler.timeline.reset_window()
        baseline = sampler.read()
        window = ledger.open()
        if trace_heap:
            heap_window = peaks.heap_peaks.open()
    if heap_window is not None:  # after the deferral's own objects are freed: they are not the statement's
        heap_baseline = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        if held.received:
            raise KeyboardInterrupt
        func()
    except BaseException as exc:
        error = exc
    with deferred_interrupts() as held:
        duration = time.perf_counter() - t0
        exact, exact_known = ledger.close(window)
        if heap_window is not None:
            heap_peak, heap_exact = peaks.heap_peaks.close(heap_window)
            heap_now = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
            heap_peak = max(heap_peak or 0, heap_now, heap_baseline or 0)
        sampler.stop()
    if held.received and error is None:
        error = KeyboardInterrupt()
    end = sampler.timeline.last.rss if sampler.timeline.last is not None else sampler.read()
    sampled_max = sampler.timeline.window_max or end
    # With children, samples are this process + children while the high-water
    # mark covers this process only: the larger of the two is the best bound.
    if exact is not None and exact_known:
        method = PEAK_HWM if window.reset else PEAK_RU_MAXRSS
    else:
        exact, method = None, PEAK_SAMPLED
    peak = max(baseline, end, sampled_max, exact or 0)
    run = MemitRun(
        baseline=baseline,
        peak=peak,
        end=end,
        duration=duration,
        samples=sampler.timeline.count - count_before,
        heap_baseline=heap_baseline,
        heap_peak=heap_peak,
        heap_exact=heap_exact,
    )
    return run, method, error


def _describe_methods(methods: set[str], interval: float) -> str:
    if not methods:
        return PEAK_SAMPLED
    parts = []
    for m in sorted(methods):
        parts.append(f"sampled every {interval:g} s (may miss spikes shorter than that)" if m == PEAK_SAMPLED else m)
    return "; ".join(parts)
