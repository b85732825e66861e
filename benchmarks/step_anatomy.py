"""Where an update's wall time and memory go, read from what torch records (used by benchmarks/profile_step.py).

gpu_gaps:   a CUDA-only profiler trace (kernels, copies, memsets; no CPU tracing, so the host runs at its own speed)
            -> the wall time the GPU was busy (the union of its intervals), the idle gaps between them, and the time
            in NCCL kernels (transfer and waiting for the other processes);
peak_sites: the caching allocator's recorded history over some updates -> the allocated peak and what was live
            there, summed by the code that allocated it.
"""

import json
import os
from collections import defaultdict

GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")


def gpu_gaps(trace_path, min_gap_us=200.0, top=6):
    """{busy_us, span_us, idle_us, gaps: count of idle gaps >= min_gap_us, idle_in_gaps_us, nccl_us: summed NCCL kernel
    time, largest: [(gap us, kernel before, kernel after)]} over every GPU stream of the trace together (one device)."""
    with open(trace_path, encoding="utf-8") as f:
        events = json.load(f)["traceEvents"]
    work = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), e.get("name", "?"))
                  for e in events if e.get("ph") == "X" and e.get("cat") in GPU_WORK)
    if not work:
        return {"busy_us": 0.0, "span_us": 0.0, "idle_us": 0.0, "gaps": 0, "nccl_us": 0.0, "idle_in_gaps_us": 0.0,
                "largest": []}
    busy, gaps = 0.0, []
    start, end, end_name = work[0]
    for s, e, name in work[1:]:
        if s > end:   # an idle gap: close the busy interval
            busy += end - start
            if s - end >= min_gap_us:
                gaps.append((s - end, end_name[:60], name[:60]))
            start, end, end_name = s, e, name
        elif e > end:
            end, end_name = e, name
    busy += end - start
    span = end - work[0][0]
    # NCCL's kernels run from the moment a collective is launched until every process has joined it: their time is
    # the data's transfer plus the wait for the slowest process
    nccl = sum(e - s for s, e, name in work if "nccl" in name.lower())
    return {"busy_us": busy, "span_us": span, "idle_us": span - busy, "gaps": len(gaps), "nccl_us": nccl,
            "idle_in_gaps_us": sum(g for g, _, _ in gaps), "largest": sorted(gaps, reverse=True)[:top]}


def _site(frames, depth=3):
    """The innermost frames that are not torch's own machinery (the code that asked for the memory)."""
    keep = [f for f in frames if f["filename"].endswith(".py")
            and ("/torch/" not in f["filename"] or "torchinductor" in f["filename"])]
    return " < ".join(f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}" for f in keep[:depth]) or "?"


def _replay(trace, baseline_bytes, stop=None):
    """The allocations and frees of trace[:stop] -> (blocks live at the end {addr: (bytes, site)}, the highest
    allocated bytes reached, the index of the entry that reached it)."""
    live, current, peak, peak_at = {}, baseline_bytes, baseline_bytes, -1
    for i, entry in enumerate(trace[:stop]):
        if entry["action"] == "alloc":
            live[entry["addr"]] = (entry["size"], _site(entry.get("frames", [])))
            current += entry["size"]
            if current > peak:
                peak, peak_at = current, i
        elif entry["action"] == "free_completed" and entry["addr"] in live:
            current -= live.pop(entry["addr"])[0]
    return live, peak, peak_at


def peak_sites(snapshot, device, baseline_bytes, top=12):
    """Replay the recorded allocations and frees of `device` from `baseline_bytes` (allocated when recording began)
    -> (peak bytes, [(bytes live at the peak, site)] largest first). Blocks allocated before the recording are the
    baseline (weights, optimizer states): they are not in the history. Two passes: the first finds the peak, the
    second stops there (no copy of the live blocks at every new high)."""
    trace = snapshot["device_traces"][device]
    _, peak, peak_at = _replay(trace, baseline_bytes)
    at_peak, _, _ = _replay(trace, baseline_bytes, peak_at + 1)
    by_site = defaultdict(int)
    for size, site in at_peak.values():
        by_site[site] += size
    return peak, sorted(((b, s) for s, b in by_site.items()), reverse=True)[:top]
