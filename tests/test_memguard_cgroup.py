"""The memory guard against a real memory cgroup: a kernel confined to 1 GiB, the loop that would kill it.

A child cgroup of the test process's own memory cgroup (v1 or v2) is
created, limited to 1 GiB, the test kernel's pid is moved into it, and the
cgroup is removed afterwards; where none is writable the tests skip with the
reason.  Then, as a user would: ``%memguard on``, ``keep = bytearray(100 MiB)``,
and ``while True: chunks.append(bytearray(8 MiB))`` twenty times.
"""

from __future__ import annotations

import time

import pytest

from .cgroups import Unavailable, child_cgroup
from .test_kernel import _env, execute

pytestmark = [pytest.mark.kernel]
jupyter_client = pytest.importorskip("jupyter_client")

GiB = 2**30
RUNAWAY = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 2**20))"


def _text(messages: list[dict]) -> str:
    out = []
    for m in messages:
        c = m["content"]
        if m["msg_type"] == "stream":
            out.append(c["text"])
        elif m["msg_type"] == "error":
            out.append(f"{c['ename']}: {c['evalue']}")
        elif m["msg_type"] in ("execute_result", "display_data"):
            out.append(c["data"].get("text/plain", ""))
    return "".join(out)


@pytest.fixture
def confined(tmp_path):
    """A kernel in a fresh 1 GiB memory cgroup, with its own cache directory and notebook name."""
    from jupyter_client.manager import start_new_kernel

    try:
        group_cm = child_cgroup(GiB)
        group = group_cm.__enter__()
    except Unavailable as exc:
        pytest.skip(f"no writable memory cgroup: {exc}")
    env = _env(tmp_path)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["JPY_SESSION_NAME"] = str(tmp_path / "guarded.ipynb")
    kernels = []

    def start():
        km, kc = start_new_kernel(kernel_name="python3", env=env)
        kernels.append((km, kc))
        group.add(km.provisioner.process.pid)
        return km, kc

    try:
        yield group, start
    finally:
        for km, kc in kernels:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        group_cm.__exit__(None, None, None)


@pytest.mark.cgroup
def test_runaway_loop_is_stopped_twenty_times_and_the_kernel_lives(confined):
    group, start = confined
    _km, kc = start()
    _, reply = execute(kc, "%load_ext ipymem")
    assert reply["content"]["status"] == "ok"
    messages, _ = execute(kc, "%memguard on")
    assert "container limit" in _text(messages), _text(messages)
    execute(kc, "keep = bytearray(100 * 2**20)")
    for run in range(20):
        group.reset_peak()
        messages, reply = execute(kc, RUNAWAY, timeout=120)
        text = _text(messages)
        assert reply["content"]["status"] == "error", text
        assert reply["content"]["ename"] == "MemoryLimitError", text
        assert "of the 1.00 GiB container limit" in text
        assert "memguard stopped" in text and "chunks" in text, text
        peak = group.peak()
        assert peak is None or peak >= 0.85 * GiB, f"run {run}: the cgroup peaked at {peak / 2**20:.0f} MiB"
        assert group.oom_kills() == 0, f"run {run}: the OOM killer fired"
        _, reply = execute(kc, "assert len(keep) == 100 * 2**20 and isinstance(chunks, list); del chunks")
        assert reply["content"]["status"] == "ok"
    messages, _ = execute(kc, "print(2 + 2)")
    assert _text(messages).strip() == "4"
    messages, _ = execute(kc, "%memguard off")
    assert "memguard off" in _text(messages)


@pytest.mark.cgroup
def test_a_kernel_killed_in_one_c_call_is_explained_by_the_next(confined):
    group, start = confined
    km, kc = start()
    execute(kc, "%load_ext ipymem\n%memguard on\nimport numpy as np")
    kc.execute("x = 1\ny = np.ones(3 * 2**30 // 8)\nz = 2")  # no reply will come: the kernel dies
    deadline = time.monotonic() + 60
    while km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not km.is_alive(), "the 3 GiB array did not kill the kernel in a 1 GiB cgroup"
    assert group.oom_kills() >= 1
    _km2, kc2 = start()
    messages, _ = execute(kc2, "%load_ext ipymem")
    text = _text(messages)
    assert "the previous kernel of this notebook" in text, text
    assert "OOM killer" in text, text
    assert "line 2: y = np.ones(3 * 2**30 // 8)" in text, text
    assert "In[2]" in text, text  # IPython's number of the cell, as its traceback gives it
    messages, _ = execute(kc2, "%load_ext ipymem")  # told once
    assert "previous kernel" not in _text(messages)


@pytest.mark.cgroup
def test_hard_mode_refuses_the_one_call_in_the_users_code(confined):
    group, start = confined
    _km, kc = start()
    execute(kc, "%load_ext ipymem\n%memguard on --hard\nimport numpy as np\nkeep = np.ones(2**20)")
    messages, reply = execute(kc, "y = np.ones(3 * 2**30 // 8)", timeout=120)
    assert reply["content"]["status"] == "error", _text(messages)
    assert "MemoryError" in reply["content"]["ename"] or "Unable to allocate" in _text(messages)
    assert group.oom_kills() == 0
    _, reply = execute(
        kc,
        "assert keep.sum() == 2**20; small = np.ones(10**6); import resource; "
        "assert resource.getrlimit(resource.RLIMIT_DATA)[0] != 0",
    )
    assert reply["content"]["status"] == "ok"
    messages, _ = execute(kc, "%memguard off\nimport resource; print(resource.getrlimit(resource.RLIMIT_DATA))")
    assert "(-1, -1)" in _text(messages)


@pytest.mark.parametrize("cell_kind", ["loop", "function"])
def test_the_guard_stops_a_kernel_cell_against_mem_limit(tmp_path, cell_kind):
    """No cgroup needed: MEM_LIMIT (this kernel's RSS) binds; the kernel runs each cell from an asyncio task."""
    from jupyter_client.manager import start_new_kernel

    env = _env(tmp_path)
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), MEM_LIMIT=str(GiB))
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        messages, _ = execute(kc, "%load_ext ipymem\n%memguard on --stop 600M --warn 400M")
        assert "memguard on" in _text(messages), _text(messages)
        # Bounded (3.2 GiB at most), so a guard that failed to stop it cannot take the machine's memory.
        code = "chunks = []\nwhile len(chunks) < 400:\n    chunks.append(bytearray(8 * 2**20))"
        if cell_kind == "function":  # the loop in a function of an earlier cell
            execute(kc, "def f(out):\n    while len(out) < 400:\n        out.append(bytearray(2**23))\n")
            code = "chunks = []\nf(chunks)"
        messages, reply = execute(kc, code, timeout=120)
        assert reply["content"]["ename"] == "MemoryLimitError", _text(messages)
        assert "of the 1.00 GiB MEM_LIMIT" in _text(messages)
        messages, _ = execute(kc, "print(len(chunks) > 10)")
        assert _text(messages).strip() == "True"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
