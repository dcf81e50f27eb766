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


def _fresh(code: str, **env: str) -> str:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(Path.home())}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True,
                          text=True, timeout=600, cwd=REPO, env={**base, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_passive_threads_are_chosen_before_torch_and_never_over_the_users_choice():
    code = """
        import json, os, sys
        from danet_app import warmup
        first = warmup.passive_threads()
        print(json.dumps([first, os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules]))
    """
    assert json.loads(_fresh(code)) == [True, "PASSIVE", False]
    assert json.loads(_fresh(code, OMP_WAIT_POLICY="ACTIVE")) == [False, "ACTIVE", False]
    late = """
        import json, os, torch
        from danet_app import warmup
        print(json.dumps([warmup.passive_threads(), os.environ.get("OMP_WAIT_POLICY")]))
    """
    assert json.loads(_fresh(late)) == [False, None]          # too late once torch is loaded: left alone


@pytest.mark.slow
def test_the_warm_up_fills_the_first_visit_and_starts_the_decoding_sandbox():
    """The whole warm-up in a fresh process: every step ran, the sidebar's forward cache holds the
    default view, and the first upload's decode uses the fork server the warm-up started."""
    code = """
        import io, json, time
        from danet_app import warmup
        assert warmup.start()
        for _ in range(1200):
            if "decoding sandbox started" in warmup.seconds:
                break
            time.sleep(0.25)
        from danet.safety import sandbox
        from danet_app import sidebar
        from PIL import Image
        server = sandbox._SERVER.process.pid
        buffer = io.BytesIO()
        Image.new("RGB", (1024, 768), (90, 30, 60)).save(buffer, format="JPEG")
        image = sidebar.decode_image("upload", 1_000_000, buffer.getvalue())
        print(json.dumps({"steps": list(warmup.seconds), "results": sidebar.app_caches()["result"].computed,
                          "same_server": sandbox._SERVER.process.pid == server,
                          "shape": list(image.array.shape), "again": warmup.start()}))
    """
    report = json.loads(_fresh(code))
    assert report["steps"] == ["import torch, danet, streamlit", "import timm", "load the default model",
                               "forward on the first sample", "attention view payload (row sweep)",
                               "decoding sandbox started"]
    assert report["results"] == 1 and report["same_server"] and report["shape"] == [768, 1024, 3]
    assert report["again"] is False                            # once per process
