"""Importing the app starts nothing: every ``danet_app`` module imports in a fresh interpreter
without starting a thread or loading a model (the warm-up is the entry points' to start)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the app needs the [app] extra: pip install -e '.[app]'")

REPO = Path(__file__).resolve().parent.parent

# A fresh interpreter: this pytest process has imported (and may have warmed) everything already.
IMPORT_THE_APP = textwrap.dedent("""
    import importlib, json, pkgutil, threading, time
    before = {t.name for t in threading.enumerate()}
    from danet.models import DANet          # the library alone starts nothing (test_imports.py)
    built = []
    construct = DANet.__init__
    def counting(self, *args, **kwargs):
        built.append(type(self).__name__)
        construct(self, *args, **kwargs)
    DANet.__init__ = counting
    import danet_app
    names = ["danet_app"]
    for module in pkgutil.walk_packages(danet_app.__path__, "danet_app."):
        importlib.import_module(module.name)
        names.append(module.name)
    time.sleep(0.5)                         # a thread started at import would be running by now
    from danet_app import warmup
    print(json.dumps({
        "imported": names,
        "new_threads": sorted({t.name for t in threading.enumerate()} - before),
        "active": threading.active_count(),
        "models": len(built),
        "warmup_started": warmup._started, "warmup_seconds": warmup.seconds,
    }))
""")


def test_importing_every_app_module_starts_no_thread_and_loads_no_model():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(Path.home())}   # no DANET_APP_WARMUP
    done = subprocess.run([sys.executable, "-c", IMPORT_THE_APP], check=False, capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    on_disk = {p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
               for p in (REPO / "danet_app").rglob("*.py")}
    assert on_disk <= set(report["imported"]), f"not walked: {sorted(on_disk - set(report['imported']))}"
    assert report["new_threads"] == [] and report["active"] == 1, report
    assert report["models"] == 0, "a DANet was built at import"
    assert not report["warmup_started"] and report["warmup_seconds"] == {}
