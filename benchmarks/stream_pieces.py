"""Inputs larger than one transfer to a lent GPU host, in pieces: the GPU job scripts' inputs ($IN) travel this way.

A call to the host carries the checkout plus at most 64 MiB, and returns nothing that stays unless a later call
follows while the host is warm. So the inputs go as one stream cut into pieces, one piece per call; on the host each
call appends its piece and writes out every file the stream now holds whole (checked by sha256), while the job
already runs and waits for its files (gpu_job_inputs.sh's waitfor).

    # here: the stream, its manifest and one folder per piece (an ignored folder of the checkout, e.g. .xfer/)
    python benchmarks/stream_pieces.py cut --out .xfer --piece-mib 52 wheels.tar=W qdata.tar.xz=Q qwen05.gguf=G
    # each call: carry [".xfer/meta", ".xfer/cNN"], and on the host
    python3 benchmarks/stream_pieces.py join --pieces .xfer --stream /tmp/stream.bin --to /tmp/in

Piece size: the checkout travels too (about 6 MiB here), so 52 MiB pieces leave room; 58 MiB did not.
A piece appended twice is skipped, one out of order or of the wrong size refused, one cut short by an interrupted call
appended again whole; a stream or a file left by another cut is refused; a file whose sha256 differs stops the join
with its name.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys

MANIFEST = "manifest.json"


def cut(files, out, piece_bytes):
    """files [(name, path)] -> out/meta/manifest.json + out/cNN/piece.NN; returns the manifest."""
    offset, entries = 0, []
    for name, path in files:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        size = os.path.getsize(path)
        entries.append({"name": name, "offset": offset, "size": size, "sha256": h.hexdigest()})
        offset += size
    manifest = {"piece": piece_bytes, "total": offset, "pieces": -(-offset // piece_bytes), "files": entries}
    os.makedirs(os.path.join(out, "meta"), exist_ok=True)
    with open(os.path.join(out, "meta", MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.copy(os.path.abspath(__file__), os.path.join(out, "meta", os.path.basename(__file__)))
    piece, left, sink = 0, piece_bytes, None
    for name, path in files:
        with open(path, "rb") as f:
            while block := f.read(min(left, 1 << 22)):
                if sink is None:   # a piece is opened for its first byte: no empty piece at an exact multiple
                    os.makedirs(os.path.join(out, f"c{piece:02d}"), exist_ok=True)
                    sink = open(os.path.join(out, f"c{piece:02d}", f"piece.{piece:02d}"), "wb")
                sink.write(block)
                left -= len(block)
                if left == 0:
                    sink.close()
                    sink, piece, left = None, piece + 1, piece_bytes
    if sink is not None:
        sink.close()
    return manifest


def join(pieces, stream, to):
    """Append every piece found under `pieces` (in any cNN folder or at its top) to `stream` in order, then write
    each file the stream holds whole to `to`. Returns the names written now."""
    with open(os.path.join(pieces, "meta", MANIFEST)) as f:
        manifest = json.load(f)
    found = {}
    for root, _, names in os.walk(pieces):
        for n in names:
            if n.startswith("piece."):
                found[int(n.split(".")[1])] = os.path.join(root, n)
    # the stream belongs to one cut: a stream (or --to) left by another on a warm host is refused, not reused
    tag, stamp = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(), stream + ".manifest"
    if os.path.exists(stamp) and open(stamp).read() != tag:
        raise SystemExit(f"stream_pieces: {stream} was joined from another cut: delete it and {stamp}")
    with open(stamp, "w") as f:
        f.write(tag)
    for index in sorted(found):
        want, size = index * manifest["piece"], os.path.getsize(found[index])
        expected = min(manifest["piece"], manifest["total"] - want)
        if size != expected:
            raise SystemExit(f"stream_pieces: {found[index]} is {size} bytes, piece {index} of this cut is {expected}")
        have = os.path.getsize(stream) if os.path.exists(stream) else 0
        if have >= want + size:
            continue   # appended by an earlier call
        if have < want:
            raise SystemExit(f"stream_pieces: piece {index} came before piece {have // manifest['piece']}")
        with open(stream, "r+b" if have else "wb") as s:   # a piece cut short by an interrupted call: again, whole
            s.truncate(want)
            s.seek(want)
            with open(found[index], "rb") as p:
                shutil.copyfileobj(p, s)
    have = os.path.getsize(stream) if os.path.exists(stream) else 0
    os.makedirs(to, exist_ok=True)
    written = []
    for entry in manifest["files"]:
        dest = os.path.join(to, entry["name"])
        if os.path.exists(dest) and os.path.getsize(dest) != entry["size"]:
            raise SystemExit(f"stream_pieces: {dest} exists and is not this cut's {entry['name']}: delete it")
        if os.path.exists(dest) or entry["offset"] + entry["size"] > have:
            continue
        h, left = hashlib.sha256(), entry["size"]
        with open(stream, "rb") as s, open(dest + ".tmp", "wb") as o:
            s.seek(entry["offset"])
            while left:
                block = s.read(min(left, 1 << 22))
                h.update(block)
                o.write(block)
                left -= len(block)
        if h.hexdigest() != entry["sha256"]:
            os.remove(dest + ".tmp")
            raise SystemExit(f"stream_pieces: {entry['name']}: sha256 differs from the manifest's")
        os.rename(dest + ".tmp", dest)   # whole or absent: the job waits for the name
        written.append(entry["name"])
    print(f"stream {have} of {manifest['total']} bytes; written now: {', '.join(written) or 'none'}")
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cut")
    c.add_argument("--out", required=True)
    c.add_argument("--piece-mib", type=float, default=52)
    c.add_argument("files", nargs="+", metavar="NAME=PATH", help="the name the file gets on the host, and its path here")
    j = sub.add_parser("join")
    j.add_argument("--pieces", required=True)
    j.add_argument("--stream", required=True)
    j.add_argument("--to", required=True)
    args = p.parse_args(argv)
    if args.command == "cut":
        files = [tuple(f.split("=", 1)) for f in args.files]
        bad = [f for f, pair in zip(args.files, files) if len(pair) != 2 or not os.path.isfile(pair[1])]
        if bad:
            sys.exit(f"stream_pieces: {bad[0]}: give NAME=PATH of an existing file")
        if len({name for name, _ in files}) < len(files) or args.piece_mib <= 0:
            sys.exit("stream_pieces: the NAMEs must differ and --piece-mib be positive")
        if os.path.exists(args.out) and os.listdir(args.out):
            sys.exit(f"stream_pieces: --out {args.out} is not empty (pieces of another cut would travel with these)")
        m = cut(files, args.out, int(args.piece_mib * (1 << 20)))
        print(f"{m['pieces']} pieces of {args.piece_mib} MiB, {m['total']} bytes, under {args.out}")
    else:
        join(args.pieces, args.stream, args.to)


if __name__ == "__main__":
    main()
