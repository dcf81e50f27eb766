"""The library stands alone: every module under ``danet/`` imports without streamlit or plotly,
and the example at the top of ``danet/__init__.py`` runs as written."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

import danet

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "assets" / "samples"

# A fresh interpreter: modules imported by pytest or other tests cannot hide a stray import.
IMPORT_EVERYTHING = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import danet, danet.cli
    names = ["danet", "danet.cli"]
    for module in pkgutil.walk_packages(danet.__path__, "danet."):
        if module.name.rsplit(".", 1)[-1] != "__main__":      # running those prints or starts a command
            importlib.import_module(module.name)
            names.append(module.name)
    print(json.dumps({"imported": names, "ui": sorted(m for m in sys.modules
                                                    if m.split(".")[0] in ("streamlit", "plotly"))}))
""")


def test_library_and_cli_import_neither_streamlit_nor_plotly():
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    on_disk = {p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
               for p in (REPO / "danet").rglob("*.py") if p.stem != "__main__"}
    assert on_disk <= set(report["imported"]), f"not walked: {sorted(on_disk - set(report['imported']))}"
    assert report["ui"] == [], f"the library pulled in {report['ui']}"


def test_the_public_names_exist():
    for name in danet.__all__:
        assert hasattr(danet, name), name
    assert callable(danet.load) and callable(danet.inspect_image)


def docstring_example() -> str:
    """The indented block after ``Typical use::`` in ``danet/__init__.py``."""
    lines = danet.__doc__.split("Typical use::", 1)[1].splitlines()[1:]
    block = []
    for line in lines:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip()


def test_the_package_docstring_example_runs():
    code = docstring_example()
    assert "danet.load(" in code and "inspect_image" in code and ".rows(" in code
    sample = sorted(SAMPLES.glob("*.png"))[0]
    image = np.asarray(Image.open(sample).convert("RGB"))       # read-only, as users will pass it
    namespace = {"image_rgb_uint8": image}
    exec(compile(code, "danet/__init__.py docstring", "exec"), namespace)
    result, maps = namespace["result"], namespace["maps"]
    assert isinstance(result, danet.InspectionResult)
    assert result.image_size == image.shape[:2]
    assert maps.shape == (2, *result.grid_size)
    np.testing.assert_allclose(maps.reshape(2, -1).sum(1), 1.0, rtol=1e-4)   # each is a softmax row


def test_import_danet_loads_no_torch_until_a_model_name_is_used():
    """``import danet`` and the decoding modules stay light (the upload sandbox's fork server
    imports ``danet.data.isolated``: with torch it took seconds to start and 0.5 GB); the
    public names still work, importing what they need on first use."""
    code = textwrap.dedent("""
        import json, sys
        import danet, danet.errors, danet.data.isolated
        light = "torch" not in sys.modules
        from danet import load, inspect_image
        print(json.dumps([light, "torch" in sys.modules, callable(load), callable(danet.get_model),
                          sorted(set(danet.__all__) - set(dir(danet)))]))
    """)
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True, True, True, True, []]
