"""The one table bench/gpu_check.sh ends with: every figure of issue 14 from its JSON files.

    python bench/gpu_table.py OUT_DIR

Reads what each step wrote into OUT_DIR (pauses.json, gpu_measure.json, units.json,
cold_ready.json, pipeline.json); a step that did not run shows as "not run".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    try:
        text = path.read_text().strip()
        return json.loads(text.splitlines()[-1] if path.suffix == ".json" and text.startswith('{"ts"') else text)
    except (OSError, ValueError, IndexError):
        return None


def rows(out: Path) -> list[tuple[str, str, str]]:
    table: list[tuple[str, str, str]] = []
    pauses = _load(out / "pauses.json")
    if pauses:
        for k in ("stock", "frozen"):
            r = pauses.get(k) or {}
            table.append(("pauses", f"ComfyUI {k}: stalls >100 ms / 60 s, max step ms, busy (4 in flight)",
                          f"{r.get('stalls_over_100ms')} / {r.get('max_step_ms', float('nan')):.0f} / "
                          f"{r.get('busy_4_inflight', float('nan')):.3f}"))
    measure = _load(out / "gpu_measure.json")
    if measure and "euler" in measure:
        e = measure["euler"]
        table.append(("overhead", "bridge overhead p50 / p95 ms (SDXL euler, frozen ComfyUI)",
                      f"{e['overhead_p50_ms']:.1f} / {e['overhead_p95_ms']:.1f}"))
    units = _load(out / "units.json")
    for r in units or []:
        table.append(("units", f"{r['model']} {r['size']}² {r['sampler']} b{r['batch']}: measured / predicted s",
                      f"{r['measured_s']:.3f} / {r['predicted_s']:.3f} ({r['error']:+.0%})"))
    cold = _load(out / "cold_ready.json")
    if cold:
        phases = cold.get("startup_s", {})
        table.append(("cold start", "s from start: " + ", ".join(phases), " / ".join(f"{v:.1f}" for v in phases.values())))
        b = cold.get("benchmark") or {}
        table.append(("benchmark", "generations measured, units/s, standard error",
                      f"{b.get('generations')}, {b.get('units_per_s')}, {b.get('standard_error')}"))
    for r in _load(out / "pipeline.json") or []:
        table.append(("S3 pipeline", f"{r['design']}: span busy, gap max ms, overlap",
                      f"{r.get('span_busy', float('nan')):.3f}, {r.get('gap_max_ms', float('nan')):.0f}, "
                      f"{r.get('overlap', float('nan')):.2f}"))
    for name, file in (("pauses", "pauses.json"), ("units", "units.json"), ("cold start", "cold_ready.json"),
                       ("S3 pipeline", "pipeline.json")):
        if not any(t[0] == name for t in table):
            table.append((name, "", f"not run ({file} missing)"))
    return table


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    table = rows(out)
    w0, w1 = max(len(r[0]) for r in table), max(len(r[1]) for r in table)
    print(f"\n{'area':<{w0}}  {'figure':<{w1}}  value")
    for area, what, value in table:
        print(f"{area:<{w0}}  {what:<{w1}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
