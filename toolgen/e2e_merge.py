"""One end-to-end report from runs made in shards.

`toolgen.evaluate --e2e-shard K/N` runs the agent loop on every N-th held-out request from the K-th on: N
processes (one per GPU, say) share one source's requests, interleaved so that each gets as many long requests as
short ones. This merges their evaluation folders: the transcripts of every shard, paired with their gold requests
by uid and scored together by agent_metrics.e2e_metrics, as if one process had run them all.

    python -m toolgen.e2e_merge --data DATA --out DIR [--e2e-split val] EVAL_SHARD_0 EVAL_SHARD_1 ...

Requests that no shard finished (cut by --e2e-time-limit, or never started) count in agent_e2e/<source>/requests_cut.
The shards must cover each source's held-out requests exactly once, each the whole of its share (no --e2e-limit);
otherwise it stops and says which requests are missing or doubled.
"""

import argparse
import os
import sys

from toolgen.agent_metrics import e2e_metrics
from toolgen.checkpoint import read_json
from toolgen.data.agent_sources import E2E_FILES, e2e_prefix, e2e_requests
from toolgen.report import write_report
from toolgen.transcript import Transcript


class MergeError(Exception):
    pass


def shard_spec(text):
    """--e2e-shard K/N -> (K, N)."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N with 0 <= K < N, e.g. 0/2")
    return int(k), int(n)


def transcript_file(system, source, split="test"):
    """Where toolgen.evaluate writes a system's transcripts of a source, inside its --out folder."""
    suffix = "" if split == "test" else f"_{split}"
    return os.path.join("transcripts", f"{system.replace('/', '_')}_{source}{suffix}.json")


def load_requests(data, split="test", sources=(), shard=None, error=MergeError):
    """{source: [GoldRequest]} of DATA/agent_e2e_<split>.json: only `sources` (all when none is named), and of each
    the shard (K, N)'s share, every N-th request from the K-th (each shard gets long requests and short ones alike).
    No file: {} (an error when sources are named)."""
    path = os.path.join(data, E2E_FILES[split])
    if not os.path.exists(path):
        if sources:
            raise error(f"--e2e-source: no end-to-end requests to choose from (no {path})")
        return {}
    requests = e2e_requests(read_json(path, error))
    unknown = sorted(set(sources) - set(requests))
    if unknown:
        raise error(f"--e2e-source {unknown[0]}: {path} has no such source (it has "
                    f"{', '.join(sorted(requests)) or 'none'})")
    k, n = shard or (0, 1)
    return {s: rows[k::n] for s, rows in requests.items() if s in (sources or [s])}


def shard_systems(folders):
    """[(folder, its metrics.json systems)], each shard's report read once (a folder given twice stays twice)."""
    return [(folder, read_json(os.path.join(folder, "metrics.json"), MergeError).get("systems", {}))
            for folder in folders]


def shard_transcripts(shards, sources, split="test"):
    """{(system, source): {uid: (folder, transcript dict)}} over the shards ([(folder, systems)]); a uid in two
    shards is an error."""
    found = {}
    for folder, systems in shards:
        for system in systems:
            for source in sources:
                path = os.path.join(folder, transcript_file(system, source, split))
                if not os.path.exists(path):
                    continue
                seen = found.setdefault((system, source), {})
                for t in read_json(path, MergeError):
                    if t.get("uid") in seen:
                        raise MergeError(f"{path}: request {t.get('uid')!r} is also in {seen[t['uid']][0]} (the same "
                                         "shard given twice, or shards of different splits)")
                    seen[t.get("uid")] = (folder, t)
    if not found:
        raise MergeError(f"no end-to-end transcripts in {', '.join(folder for folder, _ in shards)}")
    return found


def check_coverage(shards, requests, split="test"):
    """Each source's shards, by the counts their metrics report (finished + cut), add up to its held-out requests."""
    prefix = e2e_prefix(split)
    for source, rows in requests.items():
        counts = {}
        for _, systems in shards:
            for system, m in systems.items():
                key = f"{prefix}/{source}/requests"
                if key in m:
                    counts[system] = counts.get(system, 0) + m[key] + m.get(f"{prefix}/{source}/requests_cut", 0)
        for system, n in counts.items():
            if n != len(rows):
                raise MergeError(f"{system} on {source}: the shards cover {n} of its {len(rows)} held-out requests (a "
                                 "shard missing or doubled, or run with --e2e-limit)")


def merge(folders, requests, split="test"):
    """-> ({system: {agent_e2e/<source>/<metric>: value}}, {transcript file: merged transcripts, in request order});
    on the validation split the metrics are agent_e2e_val/<source>/<metric>."""
    shards, prefix = shard_systems(folders), e2e_prefix(split)
    check_coverage(shards, requests, split)
    systems, files = {}, {}
    for (system, source), by_uid in shard_transcripts(shards, requests, split).items():
        gold = {r.uid: r for r in requests[source]}
        unknown = sorted(set(by_uid) - set(gold))
        if unknown:
            raise MergeError(f"{by_uid[unknown[0]][0]}: request {unknown[0]!r} is not a held-out {source} request of "
                             "this --data folder")
        ordered = [Transcript.from_dict(by_uid[r.uid][1]) for r in requests[source] if r.uid in by_uid]
        done = [t for t in ordered if t.finished]
        m = e2e_metrics(done, [gold[t.uid] for t in done], cut=len(requests[source]) - len(done))
        systems.setdefault(system, {}).update({f"{prefix}/{source}/{k.split('/', 1)[1]}": v for k, v in m.items()})
        systems[system][f"{prefix}/{source}/shards"] = len(folders)
        files[transcript_file(system, source, split)] = [t.to_dict() for t in ordered]
    return systems, files


def main(argv=None):
    p = argparse.ArgumentParser(prog="toolgen-e2e-merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the prepared folder the shards were evaluated on")
    p.add_argument("--out", required=True, help="the merged report's folder (metrics.json, metrics.md, transcripts/)")
    p.add_argument("--e2e-split", choices=list(E2E_FILES), default="test", help="the split the shards ran on")
    p.add_argument("shards", nargs="+", help="the --out folders of toolgen.evaluate --e2e-shard K/N")
    args = p.parse_args(argv)
    try:
        requests = load_requests(args.data, args.e2e_split)
        if not requests:
            raise MergeError(f"{os.path.join(args.data, E2E_FILES[args.e2e_split])}: not found")
        systems, files = merge(args.shards, requests, args.e2e_split)
    except MergeError as e:
        sys.exit(f"toolgen-e2e-merge: error: {e}")
    write_report(args.out, systems, {}, {}, extra=files)
    print(f"merged {len(args.shards)} shards into {args.out}: "
          + ", ".join(f"{s} {m.get(k)}" for s, m in systems.items() for k in m if k.endswith("/requests")))


if __name__ == "__main__":
    main()
