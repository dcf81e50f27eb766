"""Print the native NL/GC/DNL/CC heads' max abs differences against the mmseg 1.2.2 fixtures.

Uses the loaders of tests/test_heads_mmseg.py (which asserts the same figures under 1e-5):
logits (and relative to the largest logit), then per map its rows of all N queries, its mean
row and all N columns against the dense matrices built from mmseg's captured attention tensors.
Run from the repository root: ``python tools/heads_faithfulness.py``.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_heads_mmseg as t

print("| head | logits | maps: rows / mean row / columns |")
print("|---|---|---|")
for name in t.HEADS:
    head, tensors, state, maps, grid = t.run(name)
    logits = t.diff(state.logits["out"], tensors["logits"])
    everyone = torch.arange(grid.cells)
    parts = []
    for map_name, dense in t.reference_maps(name, tensors, grid.cells).items():
        attention_map = maps[map_name]
        rows = t.diff(attention_map.rows_at(everyone), dense)
        mean = t.diff(attention_map.mean_row(), dense.double().mean(0))
        column = max(t.diff(attention_map.column(c), dense[:, c]) for c in range(grid.cells))
        parts.append(f"`{map_name}` {rows:.1e} / {mean:.1e} / {column:.1e}")
    print(f"| {name} | {logits:.1e} (rel {logits / float(tensors['logits'].abs().max()):.1e}) | {'; '.join(parts)} |")
