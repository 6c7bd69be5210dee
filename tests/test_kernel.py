"""Kernel-level tests: a real ipykernel (jupyter_client), reading the iopub messages a frontend gets.

The in-process kernel delivers no widget messages, so these start a kernel
process with this worktree first on its ``PYTHONPATH``.  Each test needs a
few seconds; they are marked ``kernel``.
"""

from __future__ import annotations

import os
import queue
import sys
import time
from pathlib import Path

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[1]

# Three seconds of GIL-holding work that allocates 5 MiB every 50 ms (~300 MiB in all).
THREE_SECONDS = """\
import time
chunks = []
t0 = last = time.perf_counter()
while (now := time.perf_counter()) - t0 < 3:
    if now - last > 0.05:
        chunks.append(bytearray(5 * 2**20))
        last = now
    x = sum(range(2000))
del chunks
"""


# How many frames the running live views have drawn (read by workloads that must outlast a few frames).
FRAMES = """\
from ipymem.live import view as _view
def _frames():
    return max((v.frames for v in list(_view._active)), default=0)
"""

# THREE_SECONDS, and on a slow machine longer, until the live view has drawn four frames (at most 30 s):
# the fourth frame means the first three were sent.
STREAMING = FRAMES + THREE_SECONDS.replace(
    "while (now := time.perf_counter()) - t0 < 3:",
    "while (now := time.perf_counter()) - t0 < 3 or (_frames() < 4 and now - t0 < 30):",
)
assert STREAMING != FRAMES + THREE_SECONDS


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("MPLCONFIGDIR", str(Path.home() / ".cache" / "ipymem-test-mpl"))
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    return env


@pytest.fixture
def kernel(tmp_path):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=_env(tmp_path))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc, code: str, timeout: float = 60) -> tuple[list[dict], dict]:
    """Run ``code``; return the iopub messages of that request (up to idle) and the execute_reply."""
    msg_id = kc.execute(code)
    messages = []
    reply = None
    deadline = time.monotonic() + timeout
    idle = False
    while time.monotonic() < deadline and not (idle and reply is not None):
        try:
            msg = kc.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            msg = None
        if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
            msg["_arrived"] = time.monotonic()
            messages.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        if reply is None:
            try:
                reply = kc.get_shell_msg(timeout=0.01)
                if reply["parent_header"].get("msg_id") != msg_id:
                    reply = None
                else:
                    reply["_arrived"] = time.monotonic()
            except queue.Empty:
                pass
    assert reply is not None, "no execute_reply"
    return messages, reply


def _image_updates(messages: list[dict]) -> list[dict]:
    return [
        m
        for m in messages
        if m["msg_type"] == "comm_msg"
        and m["content"].get("data", {}).get("method") == "update"
        and ["value"] in m["content"]["data"].get("buffer_paths", [])
        and m.get("buffers")
    ]


def _threads(kc) -> list[str]:
    messages, reply = execute(
        kc, "import threading; print(sorted(t.name for t in threading.enumerate() if t.name.startswith('ipymem-')))"
    )
    assert reply["content"]["status"] == "ok"
    out = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    return eval(out.strip())


def _check_kernel_python(kc) -> None:
    messages, _ = execute(kc, "import sys, ipymem; print(sys.executable); print(ipymem.__file__)")
    out = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    assert str(ROOT) in out, f"the kernel does not import this worktree's ipymem: {out}"


def test_memit_cell_streams_widget_updates_before_reply(kernel):
    _km, kc = kernel
    _check_kernel_python(kc)
    execute(kc, "%load_ext ipymem")
    messages, reply = execute(kc, "%%memit\n" + STREAMING)
    assert reply["content"]["status"] == "ok", reply["content"]
    # the live widget is replaced by a static PNG through its display id, then the table follows
    displays = [m for m in messages if m["msg_type"] == "display_data"]
    assert "application/vnd.jupyter.widget-view+json" in displays[0]["content"]["data"]
    display_id = displays[0]["content"]["transient"]["display_id"]
    finals = [
        i
        for i, m in enumerate(messages)
        if m["msg_type"] == "update_display_data" and m["content"]["transient"]["display_id"] == display_id
    ]
    assert finals and "image/png" in messages[finals[-1]]["content"]["data"]
    # Frames sent while the cell ran: iopub keeps the kernel's order, and the static chart replaces
    # the widget when the cell's code has finished, before its execute_reply.
    updates = _image_updates(messages[: finals[-1]])
    assert len(updates) >= 3, f"only {len(updates)} live image updates before the cell ended"
    assert all(m["_arrived"] <= reply["_arrived"] + 1.0 for m in updates)  # read from two sockets: a little slack
    assert "peak memory" in displays[-1]["content"]["data"]["text/plain"]
    assert _threads(kc) == []


def test_no_live_sends_no_widgets(kernel):
    _km, kc = kernel
    execute(kc, "%load_ext ipymem")
    messages, reply = execute(kc, "%memit --no-live x = bytearray(2**20)")
    assert reply["content"]["status"] == "ok"
    assert not [m for m in messages if m["msg_type"].startswith("comm")]
    execute(kc, "%config MemoryMagics.live = False")
    messages, reply = execute(kc, "%memit x = bytearray(2**20)")
    assert not [m for m in messages if m["msg_type"].startswith("comm")]


def test_interrupt_stops_threads_and_keeps_the_final_chart(kernel):
    km, kc = kernel
    execute(kc, "%load_ext ipymem")
    msg_id = kc.execute(
        "%%memit\n" + FRAMES + "import time\nwhile _frames() < 2:\n    time.sleep(0.01)\n"
        "print('looping', flush=True)\nwhile True:\n    time.sleep(0.01)\n"
    )
    deadline = time.monotonic() + 60  # the chart is up and has drawn: the interrupt lands in the user's loop
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        if msg["msg_type"] == "stream" and "looping" in msg["content"]["text"]:
            break
    else:
        pytest.fail("the cell never started its loop")
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    messages = []
    while True:
        try:
            messages.append(kc.get_iopub_msg(timeout=2))
        except queue.Empty:
            break
    mine = [m for m in messages if m["parent_header"].get("msg_id") == msg_id]
    finals = [m for m in mine if m["msg_type"] == "update_display_data"]
    assert finals and "image/png" in finals[-1]["content"]["data"]
    assert "interrupted" in finals[-1]["content"]["data"]["text/plain"]
    assert _threads(kc) == []


def test_frontend_disconnect_leaves_nothing_running(kernel, tmp_path):
    """The client goes away mid-cell; a new client later finds no ipymem thread alive."""
    km, kc = kernel
    execute(kc, "%load_ext ipymem")
    kc.execute("%%memit\n" + THREE_SECONDS)
    time.sleep(1.0)
    kc.stop_channels()
    time.sleep(4.0)
    kc2 = km.client()
    kc2.start_channels()
    try:
        kc2.wait_for_ready(timeout=30)
        assert _threads(kc2) == []
    finally:
        kc2.stop_channels()


def test_memwatch_in_kernel(kernel):
    _km, kc = kernel
    execute(kc, "%load_ext ipymem")
    execute(kc, "%memwatch on")
    cell = FRAMES + (
        "import time\nx = bytearray(30 * 2**20)\nt0 = time.perf_counter()\n"
        "while time.perf_counter() - t0 < 1.2 or (_frames() < 2 and time.perf_counter() - t0 < 30):\n"
        "    time.sleep(0.05)\n"
    )
    messages, reply = execute(kc, cell)
    assert reply["content"]["status"] == "ok"
    assert _image_updates(messages), "no live frame during a 1.2 s cell"
    finals = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert finals and "above start" in finals[-1]["content"]["data"]["text/plain"]
    messages, reply = execute(kc, "y = 1")  # a quick cell: a line, no drawing
    texts = [m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "update_display_data"]
    assert texts and "above start" in texts[-1]
    assert not _image_updates(messages)
    execute(kc, "%memwatch off")
    messages, reply = execute(kc, "z = 2")
    assert not [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    assert _threads(kc) == []


def test_saved_notebook_has_the_static_chart(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext ipymem"),
        nbformat.v4.new_code_cell("%%memit\n" + THREE_SECONDS.replace("< 3", "< 1.5")),
    ]
    env = _env(tmp_path)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3")
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    saved = nbformat.read(path, as_version=4)
    outputs = saved.cells[1].outputs
    assert "image/png" in outputs[0]["data"], outputs[0]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert any("peak memory" in o.get("data", {}).get("text/plain", "") for o in outputs)
    print(sys.executable, saved.metadata.get("widgets"))
