"""Peak and increment of memory while a callable runs.

For each run: the RSS baseline is read, the kernel's high-water mark is reset
(``clear_refs``), the sampler thread records the timeline, the callable runs,
and the peak is read back from the high-water mark.  No spike can hide from
that peak, however short; the sampler's maximum is kept as a lower bound and
as the fallback where the kernel offers no resettable high-water mark.

The Python heap (tracemalloc) peak is measured when asked for, or for free
when tracemalloc is already running.  tracemalloc's state is left exactly as
found: started and stopped by us only if it was off, frame count untouched.

This module knows nothing of IPython: it takes a zero-argument callable.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable

from ..models import MemitParams, MemitResult, MemitRun, outcome_of
from .interrupts import deferred_interrupts
from .probes import PEAK_SAMPLED, Probe, rss_note, shared_probe
from .rssparts import allocator_free, retained_hint
from .sampler import Sampler


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

    ``collect`` runs a full garbage collection once before the first
    baseline, so garbage left by earlier cells is not freed mid-measurement
    (which would make the increment read too low).
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
    started_tracemalloc = False
    free_before: int | None = None
    try:
        # Inside the try, so an interrupt landing just after the deferral still reaches the finally.
        # gc.collect() is deferred too: an interrupt landing in a gc callback would be lost.
        with deferred_interrupts() as held:
            if params.trace_heap and not tracemalloc.is_tracing():
                tracemalloc.start()
                started_tracemalloc = True
            if collect:
                gc.collect()
            free_before = allocator_free()
        if held.received:
            raise KeyboardInterrupt
        budget_start = time.perf_counter()
        for i in range(repeat):
            if timeout is not None and i > 0 and time.perf_counter() - budget_start >= timeout:
                timed_out = True
                break
            run, method, error = _one_run(func, probe, sampler, params.trace_heap)
            runs.append(run)
            methods.add(method)
            if error is not None:
                break
    except KeyboardInterrupt as exc:  # between runs, outside the user's code
        error = exc
    finally:
        with deferred_interrupts() as held:
            sampler.stop()
            if started_tracemalloc:
                tracemalloc.stop()
        if held.received and error is None:
            error = KeyboardInterrupt()
    notes = []
    if runs and free_before is not None:
        hint = retained_hint(runs[-1].end - runs[0].baseline, (allocator_free() or 0) - free_before)
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
    func: Callable[[], object], probe: Probe, sampler: Sampler, trace_heap: bool
) -> tuple[MemitRun, str, BaseException | None]:
    __tracebackhide__ = True  # a convention IPython (and pytest) honour: keep user tracebacks clean
    error: BaseException | None = None
    heap_baseline = heap_peak = None
    if trace_heap:
        tracemalloc.reset_peak()
        heap_baseline = tracemalloc.get_traced_memory()[0]
    count_before = sampler.timeline.count
    with deferred_interrupts() as held:
        # Start the thread first: its stack pages are ipymem's cost, not the statement's.
        sampler.start()
        sampler.timeline.reset_window()
        baseline = sampler.read()
        probe.reset_peak()
    t0 = time.perf_counter()
    try:
        if held.received:
            raise KeyboardInterrupt
        func()
    except BaseException as exc:
        error = exc
    with deferred_interrupts() as held:
        duration = time.perf_counter() - t0
        if trace_heap:
            heap_peak = tracemalloc.get_traced_memory()[1]
        exact, method = probe.peak()
        sampler.stop()
    if held.received and error is None:
        error = KeyboardInterrupt()
    end = sampler.timeline.last.rss if sampler.timeline.last is not None else sampler.read()
    sampled_max = sampler.timeline.window_max or end
    # With children, samples are this process + children while the high-water
    # mark covers this process only: the larger of the two is the best bound.
    peak = max(baseline, end, sampled_max, exact or 0)
    if exact is None:
        method = PEAK_SAMPLED
    run = MemitRun(
        baseline=baseline,
        peak=peak,
        end=end,
        duration=duration,
        samples=sampler.timeline.count - count_before,
        heap_baseline=heap_baseline,
        heap_peak=heap_peak,
    )
    return run, method, error


def _describe_methods(methods: set[str], interval: float) -> str:
    if not methods:
        return PEAK_SAMPLED
    parts = []
    for m in sorted(methods):
        parts.append(f"sampled every {interval:g} s (may miss spikes shorter than that)" if m == PEAK_SAMPLED else m)
    return "; ".join(parts)
