"""The command keeps freed memory in its process (glibc), and leaves the user's malloc settings alone."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

_PROBE = textwrap.dedent("""
    import sys, torch
    if sys.argv[1] == "retain":
        from glass_pyg.experiments.memory import retain_freed_memory
        print(retain_freed_memory())
    else:
        print(None)
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    base = rss()
    x = torch.ones(25_000_000, dtype=torch.float64)  # 190 MiB, far above glibc's mmap threshold
    grown = rss() - base
    del x
    print(grown, rss() - base)
""")


def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env)
    applied, sizes = out.stdout.split("\n")[:2]
    grown, kept = map(float, sizes.split())
    assert grown > 150
    return applied, kept / grown


def test_freed_memory_stays_in_the_process():
    applied, kept = _probe("retain")
    if applied != "True":
        pytest.skip("not glibc")
    assert kept > 0.9
    assert _probe("default")[1] < 0.1  # glibc's default gives it back


def test_the_users_malloc_settings_stay_in_force():
    applied, kept = _probe("retain", MALLOC_TRIM_THRESHOLD_="131072")
    assert applied == "False" and kept < 0.1
