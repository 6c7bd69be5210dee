"""The binding limit from fake cgroup trees (v1, v2, nested, none, ``max``, unreadable) and ``MEM_LIMIT``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipymem.engine.limits.cgroups import UsageMeter, find_limit, own_cgroup, parse_size
from ipymem.render.limits import against_limit, limit_line

GiB, MiB = 2**30, 2**20
MEMINFO = "MemTotal:       24000000 kB\nMemFree:        20000000 kB\nMemAvailable:   22000000 kB\nSwapTotal: 0 kB\n"


def tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str], mountinfo: str | None = None) -> str:
    root = tmp_path / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc_cgroup)
    (root / "proc/meminfo").write_text(MEMINFO)
    if mountinfo is not None:
        (root / "proc/self/mountinfo").write_text(mountinfo)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


def v2(tmp_path, limits: dict[str, str], current: int = 300 * MiB, inactive: int = 50 * MiB) -> str:
    files = {}
    for d, value in limits.items():
        files[f"sys/fs/cgroup/{d}/memory.max"] = value + "\n"
        files[f"sys/fs/cgroup/{d}/memory.current"] = f"{current}\n"
        files[f"sys/fs/cgroup/{d}/memory.stat"] = f"anon {current}\nfile 0\ninactive_file {inactive}\n"
        files[f"sys/fs/cgroup/{d}/memory.events"] = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"
    return tree(tmp_path, "0::/kubepods/pod1/c1\n", files)


def test_v2_own_limit(tmp_path):
    root = v2(tmp_path, {"kubepods": "max", "kubepods/pod1": "max", "kubepods/pod1/c1": str(GiB)})
    binding, found = find_limit(root, env={})
    assert binding.kind == "cgroup v2" and binding.limit == GiB
    assert binding.file.endswith("kubepods/pod1/c1/memory.max")
    assert [s.kind for s in found] == ["cgroup v2", "host"]
    meter = UsageMeter(binding)
    assert meter.usage() == 300 * MiB
    assert meter.working_set() == 250 * MiB  # less the reclaimable inactive file cache, as the kubelet counts
    assert meter.oom_kills() == 1
    meter.close()
    assert against_limit(250 * MiB, binding) == "250 MiB of the 1.00 GiB container limit (24%)"


def test_v2_tightest_ancestor_binds_and_its_usage_is_read(tmp_path):
    root = v2(tmp_path, {"kubepods": "max", "kubepods/pod1": str(2 * GiB), "kubepods/pod1/c1": str(4 * GiB)})
    binding, _ = find_limit(root, env={})
    assert binding.limit == 2 * GiB
    assert binding.directory.endswith("kubepods/pod1")  # the pod's usage hits the pod's limit, siblings included


def test_v2_max_everywhere_is_the_host(tmp_path):
    root = v2(tmp_path, {"kubepods": "max", "kubepods/pod1": "max", "kubepods/pod1/c1": "max"})
    binding, found = find_limit(root, env={})
    assert binding.kind == "host" and binding.limit == 24000000 * 1024
    assert len(found) == 1
    assert binding.label == "host RAM"


def test_v2_memory_high_is_reported(tmp_path):
    root = v2(tmp_path, {"kubepods/pod1/c1": str(GiB)})
    Path(root, "sys/fs/cgroup/kubepods/pod1/c1/memory.high").write_text(f"{900 * MiB}\n")
    binding, _ = find_limit(root, env={})
    assert binding.high == 900 * MiB
    assert "memory.high 900 MiB" in limit_line(100 * MiB, binding)


def test_v1_hierarchical_limit(tmp_path):
    base = "sys/fs/cgroup/memory/docker"
    files = {
        f"{base}/memory.limit_in_bytes": "9223372036854771712\n",
        f"{base}/memory.usage_in_bytes": "1000\n",
        f"{base}/abc/memory.limit_in_bytes": f"{512 * MiB}\n",
        f"{base}/abc/memory.usage_in_bytes": f"{200 * MiB}\n",
        f"{base}/abc/memory.stat": f"cache 10\ntotal_inactive_file {20 * MiB}\nhierarchical_memory_limit {512 * MiB}\n",
        f"{base}/abc/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    }
    root = tree(tmp_path, "12:memory:/docker/abc\n0::/\n", files)
    binding, _ = find_limit(root, env={})
    assert binding.kind == "cgroup v1" and binding.limit == 512 * MiB
    meter = UsageMeter(binding)
    assert meter.working_set() == 180 * MiB
    assert meter.oom_kills() == 2
    meter.close()


def test_v1_unlimited_is_no_limit(tmp_path):
    base = "sys/fs/cgroup/memory/user"
    files = {
        f"{base}/memory.limit_in_bytes": "9223372036854771712\n",
        f"{base}/memory.usage_in_bytes": "1000\n",
        f"{base}/memory.stat": "hierarchical_memory_limit 9223372036854771712\n",
    }
    root = tree(tmp_path, "4:memory:/user\n", files)
    assert find_limit(root, env={})[0].kind == "host"


def test_container_with_its_own_cgroup_namespace(tmp_path):
    """/proc/self/cgroup says '/', the mount's root is the container's cgroup (Docker with cgroupns)."""
    files = {
        "sys/fs/cgroup/memory.max": f"{GiB}\n",
        "sys/fs/cgroup/memory.current": f"{10 * MiB}\n",
        "sys/fs/cgroup/memory.stat": "inactive_file 0\n",
    }
    mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    root = tree(tmp_path, "0::/\n", files, mountinfo)
    assert own_cgroup(root) == ("v2", os.path.normpath(os.path.join(root, "sys/fs/cgroup")))
    assert find_limit(root, env={})[0].limit == GiB


def test_unreadable_files_mean_no_limit(tmp_path):
    root = v2(tmp_path, {"kubepods/pod1/c1": str(GiB)})
    limit = Path(root, "sys/fs/cgroup/kubepods/pod1/c1/memory.max")
    limit.unlink()
    limit.mkdir()  # open() fails on it even as root (chmod 0 does not stop root)
    assert find_limit(root, env={})[0].kind == "host"
    Path(root, "sys/fs/cgroup/kubepods/pod1/c1/memory.current").write_text("garbage\n")
    limit.rmdir()
    limit.write_text(f"{GiB}\n")
    binding, _ = find_limit(root, env={})
    meter = UsageMeter(binding)
    assert meter.usage() is None and meter.working_set() is None  # unparsable usage: no figure, no guess
    meter.close()


def test_no_cgroup_file_at_all(tmp_path):
    root = tree(tmp_path, "", {})
    binding, found = find_limit(root, env={})
    assert binding.kind == "host" and len(found) == 1


def test_mem_limit_binds_when_tighter(tmp_path):
    root = v2(tmp_path, {"kubepods/pod1/c1": str(4 * GiB)})
    binding, found = find_limit(root, env={"MEM_LIMIT": str(2 * GiB)})
    assert binding.kind == "MEM_LIMIT" and binding.limit == 2 * GiB
    assert [s.kind for s in found] == ["MEM_LIMIT", "cgroup v2", "host"]
    assert find_limit(root, env={"MEM_LIMIT": str(8 * GiB)})[0].kind == "cgroup v2"
    assert find_limit(root, env={"MEM_LIMIT": "lots"})[0].kind == "cgroup v2"  # malformed: ignored


@pytest.mark.parametrize(
    ("text", "value"),
    [("2147483648", 2 * GiB), ("2G", 2 * GiB), ("512M", 512 * MiB), ("512MiB", 512 * MiB), ("1.5 GB", 3 * GiB // 2)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "0", "lots", "2X"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_this_machine_has_a_binding_limit():
    binding, found = find_limit()
    assert binding.limit > 0 and binding in found
    meter = UsageMeter(binding)
    used = meter.working_set()
    meter.close()
    assert used is not None and 0 < used <= binding.limit


def test_memit_reports_usage_against_mem_limit(ip, monkeypatch):
    monkeypatch.setenv("MEM_LIMIT", "1G")
    monkeypatch.setattr("ipymem.engine.limits.cgroups.own_cgroup", lambda root="/": None)
    monkeypatch.setattr("ipymem.engine.limits.cgroups._BINDING", None)  # no limit found before this test
    r = ip.run_line_magic("memit", "-o bytearray(50 * 2**20)")
    use = r.limit
    assert use.source.kind == "MEM_LIMIT" and use.source.limit == GiB
    assert use.usage_peak >= use.usage_start + 49 * MiB  # at least this process's own exact rise
    assert r.to_dict()["limit"]["limit"] == GiB
    text = ip.texts()[-1]
    assert "limit: at least" in text and "of the 1.00 GiB MEM_LIMIT" in text and "RSS against MEM_LIMIT" in text
    assert "MEM_LIMIT" in ip.htmls()[-1]


def test_host_limit_is_not_shown_for_a_small_run(ip, monkeypatch):
    monkeypatch.delenv("MEM_LIMIT", raising=False)
    monkeypatch.setattr("ipymem.engine.limits.cgroups.own_cgroup", lambda root="/": None)
    monkeypatch.setattr("ipymem.engine.limits.cgroups._BINDING", None)  # no limit found before this test
    r = ip.run_line_magic("memit", "-o -q pass")
    assert r.limit is not None and r.limit.source.kind == "host" and not r.limit.shown


def test_script_runner_guard_stops_the_script_and_reports(tmp_path):
    """python -m ipymem --guard: against MEM_LIMIT (this process's RSS), a real allocation loop is stopped."""
    import subprocess
    import sys

    script = tmp_path / "grow.py"
    script.write_text("chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 2**20))\n")
    env = dict(os.environ, MEM_LIMIT=str(600 * MiB), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-m", "ipymem", "--guard", "--stop", "50%", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr
    assert "ipymem.MemoryLimitError" in out.stderr and "of the 600 MiB MEM_LIMIT" in out.stderr
    assert "grow.py:3" in out.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "ipymem", "--guard", "--stop", "150%", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2 and "usage:" in bad.stderr  # a bad level runs nothing


def test_memwho_says_how_close_the_container_is(ip, monkeypatch):
    monkeypatch.setenv("MEM_LIMIT", "1G")
    monkeypatch.setattr("ipymem.engine.limits.cgroups.own_cgroup", lambda root="/": None)
    monkeypatch.setattr("ipymem.engine.limits.cgroups._BINDING", None)  # no limit found before this test
    ip.run_cell("big = bytearray(20 * 2**20)")
    r = ip.run_line_magic("memwho", "-o")
    assert r.limit is not None and r.limit.source.kind == "MEM_LIMIT"
    assert "limit: " in ip.texts()[-1] and "of the 1.00 GiB MEM_LIMIT" in ip.texts()[-1]
    assert "MEM_LIMIT" in ip.htmls()[-1]
