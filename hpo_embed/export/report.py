"""reports/quantize.md (the candidate table) and the headline of metrics/quantize.json."""
from __future__ import annotations

import os
from typing import Any

from hpo_embed.hardware import cpu_info


def machine() -> dict[str, Any]:
    import onnxruntime

    cpu = cpu_info()
    return {"cpu": cpu.model, "cpu_count": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "isa": sorted(cpu.flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd"})}


COLUMNS = [("variant", None), ("size MB", "size_mb"), ("sent/s b32", "sps_b32"), ("× PyTorch b32", "ratio_b32"),
           ("sent/s index", "sps_index"), ("× PyTorch index", "ratio_index"), ("b1 p50 ms", "b1_p50_ms"),
           ("b1 p95 ms", "b1_p95_ms"), ("MRR Δ [95% CI]", "mrr_delta"), ("HR@1 Δ [95% CI]", "hr1_delta"),
           ("clinical sets MRR Δ [95% CI]", "sets"),
           ("top-1 agree", "top1_agreement"), ("gate", "gate"), ("GFLOP/s b32", "gflops_b32"),
           ("% fp32 peak", "peak_share_b32")]


def _sets(s: dict[str, Any]) -> str:
    sets = s.get("clinical_sets") or {}
    return ", ".join(f"{k}: {n} cases" for k, n in sets.items()) or "none present"


def report_markdown(rep: dict[str, Any]) -> str:
    def cell(r: dict, key: str | None, name: str) -> str:
        if key is None:
            return f"**{name}**" if name == rep["chosen"] else name
        v = r.get(key)
        if v is None:
            return ""
        if key == "sets":
            return "; ".join(f"{k.split('.')[-1]} {x['mrr_delta']:+.4f} [{x['mrr_delta_ci'][0]:+.4f}, "
                             f"{x['mrr_delta_ci'][1]:+.4f}]" for k, x in v.items())
        if key in ("mrr_delta", "hr1_delta"):
            lo, hi = r[f"{key}_ci"]
            return f"{v:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        if key in ("top1_agreement", "peak_share_b32"):
            return f"{v:.1%}"
        if key == "gate":
            return "pass" if v else "fail"
        return f"{v:.2f}" if isinstance(v, float) and key.startswith(("ratio", "b1")) else f"{v}"

    s = rep["settings"]
    lines = ["# quantize: INT8 candidates measured on this machine", "",
             f"Chosen: **{rep['chosen']}** (gate {'passed' if rep['gate_passed'] else 'NOT passed'}). {rep['reason']}.", "",
             f"Model `{rep['model']}`; machine {rep['machine']['cpu']} ({rep['machine']['cpu_count']} CPUs, "
             f"{', '.join(rep['machine']['isa'])}; onnxruntime {rep['machine']['onnxruntime']}); {s['threads']} threads; "
             f"{s['n_texts']} HPO texts at batch {s['batch_size']} and {s['index_batch_size']} (indexing), "
             f"{s['latency_calls']} batch-1 calls; {s['repeats']} interleaved rounds, median; load average "
             f"{s['loadavg'][0]} -> {s['loadavg'][1]} (1-minute; the measurement's own {s['threads']} threads count "
             f"in it: well above {s['threads']}, other processes shared the CPUs and the ratios carry that "
             f"load). Quality (hpo_embed/export/gate.py): {s['n_queries']} held-out queries "
             f"({s['query_source']}) and the clinical-phrase sets ({_sets(s)}) against {s['n_corpus']} concepts "
             f"({s.get('n_vectors', s['n_corpus'])} vectors, {s.get('retrieval', 'single')}-vector retrieval), "
             f"full-rank MRR (pessimistic ties) and HR@1 minus ONNX fp32, paired bootstrap 95% CI; gate: held-out "
             f"MRR Δ ≥ {s['gate_mrr_delta']}, HR@1 Δ ≥ {s['gate_hr1_delta']}, and on each clinical set the MRR Δ "
             f"CI reaches 0 (no significant loss); no INT8 passing = the ONNX fp32 export published. GFLOP/s: the "
             f"encoder's matrix-multiply FLOPs of a batch-32 pass (padded tokens) per second; % fp32 peak: over "
             f"{s.get('fp32_peak_gflops', '?')} GFLOP/s = FLOP/cycle/core x clock x threads "
             f"(hpo_embed/hardware.py).", "",
             "| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, r in rep["rows"].items():
        lines.append("| " + " | ".join(cell(r, k, name) for _, k in COLUMNS) + " |")
    lines += ["", "Candidates:", ""]
    for name, r in rep["rows"].items():
        if r.get("doc"):
            extra = f"; kept fp32: {', '.join(r['nodes_kept_fp32'])}" if r.get("nodes_kept_fp32") else ""
            lines.append(f"- `{name}`: {r['doc']}{extra}")
    lines += ["", f"Regenerate: `{rep['command']}`", ""]
    return "\n".join(lines)


def headline(rep: dict[str, Any]) -> dict[str, Any]:
    """The few keys of metrics/quantize.json (the table is in reports/quantize.*)."""
    r = rep["rows"][rep["chosen"]]
    return {"chosen": rep["chosen"], "gate_passed": rep["gate_passed"], "reason": rep["reason"],
            "candidates_passing": sum(bool(x.get("gate")) for x in rep["rows"].values() if "gate" in x),
            "speed_ratio_b32": r["ratio_b32"], "speed_ratio_index": r["ratio_index"],
            "latency_b1_p50_ratio": r["b1_p50_ratio"], "mrr_delta": r["mrr_delta"], "hr1_delta": r["hr1_delta"],
            "size_mb": r["size_mb"], "peak_rss_mb": r.get("peak_rss_mb"), "baseline": rep["baseline"]}
