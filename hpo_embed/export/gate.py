"""The quality gate and the choice: the fastest candidate whose MRR and HR@1 deltas pass."""
from __future__ import annotations

from typing import Any

QUALITY_KEYS = ("mrr", "hr1", "mrr_delta", "mrr_delta_ci", "hr1_delta", "hr1_delta_ci", "top1_agreement", "cosine_mean")


def passes_gate(row: dict[str, Any], mrr_min: float, hr1_min: float) -> bool:
    return row["mrr_delta"] >= mrr_min and row["hr1_delta"] >= hr1_min


def select(rows: dict[str, dict[str, Any]], mrr_min: float, hr1_min: float) -> tuple[str, bool, str]:
    """The candidate to publish: the fastest (batch-32 sentences/s) of those that pass the
    quality gate (MRR delta >= ``mrr_min`` and HR@1 delta >= ``hr1_min``, point estimates);
    if none passes, the best-quality one (highest MRR delta, then HR@1 delta, then speed),
    flagged. Returns ``(name, gate_passed, reason)``."""
    if not rows:
        raise ValueError("no candidates to select from")
    passing = {n: r for n, r in rows.items() if passes_gate(r, mrr_min, hr1_min)}
    if passing:
        name = max(passing, key=lambda n: (passing[n]["sps_b32"], passing[n]["mrr_delta"]))
        r = rows[name]
        return name, True, (f"fastest of {len(passing)}/{len(rows)} candidates passing the gate "
                            f"(MRR delta {r['mrr_delta']:+.4f} >= {mrr_min}, HR@1 delta {r['hr1_delta']:+.4f} >= "
                            f"{hr1_min}): {r['sps_b32']} sentences/s at batch 32")
    name = max(rows, key=lambda n: (rows[n]["mrr_delta"], rows[n]["hr1_delta"], rows[n]["sps_b32"]))
    r = rows[name]
    return name, False, (f"NO candidate passes the gate (MRR delta >= {mrr_min}, HR@1 delta >= {hr1_min}); "
                         f"published the best quality one: MRR delta {r['mrr_delta']:+.4f}, "
                         f"HR@1 delta {r['hr1_delta']:+.4f}")
