"""benchmarks/stream_pieces.py: files cut into one stream of pieces here, joined piece by piece on the host."""

import os
import shutil
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from stream_pieces import cut, join  # noqa: E402


def test_pieces_join_back_into_the_files_one_call_at_a_time(tmp_path):
    sizes = {"wheels.tar": 5000, "tiny.txt": 1, "model.gguf": 12345}
    files = []
    for name, size in sizes.items():
        path = tmp_path / f"src_{name}"
        path.write_bytes(os.urandom(size))
        files.append((name, str(path)))
    manifest = cut(files, str(tmp_path / "out"), 4096)
    assert manifest["pieces"] == 5 and manifest["total"] == 17346   # ceil(17346 / 4096)
    host, stream, to = tmp_path / "host", str(tmp_path / "stream.bin"), str(tmp_path / "in")
    shutil.copytree(tmp_path / "out" / "meta", host / "meta")
    written = []
    for i in range(manifest["pieces"]):   # each call brings one piece; what is whole by then is written
        shutil.copy(tmp_path / "out" / f"c{i:02d}" / f"piece.{i:02d}", host)
        written.append(join(str(host), stream, to))
    # wheels.tar (0-5000) needs pieces 0-1, tiny.txt (5000) piece 1, model.gguf (5001-17346) pieces 1-4
    assert written == [[], ["wheels.tar", "tiny.txt"], [], [], ["model.gguf"]]
    for name, path in files:
        assert open(os.path.join(to, name), "rb").read() == open(path, "rb").read()
    assert join(str(host), stream, to) == []   # a call repeated: nothing appended twice, nothing rewritten


def test_a_piece_out_of_order_or_damaged_is_refused(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(10000))
    cut([("big.bin", str(path))], str(tmp_path / "out"), 4096)
    host = tmp_path / "host"
    shutil.copytree(tmp_path / "out" / "meta", host / "meta")
    shutil.copy(tmp_path / "out" / "c01" / "piece.01", host)
    with pytest.raises(SystemExit, match="piece 1 came before piece 0"):
        join(str(host), str(tmp_path / "stream.bin"), str(tmp_path / "in"))
    for i in (0, 2):
        shutil.copy(tmp_path / "out" / f"c{i:02d}" / f"piece.{i:02d}", host)
    damaged = bytearray((host / "piece.02").read_bytes())
    damaged[0] ^= 1
    (host / "piece.02").write_bytes(bytes(damaged))
    with pytest.raises(SystemExit, match="big.bin: sha256 differs"):
        join(str(host), str(tmp_path / "stream2.bin"), str(tmp_path / "in"))
    assert not os.path.exists(tmp_path / "in" / "big.bin")   # never half-written


def test_pieces_in_call_folders_an_interrupted_append_and_another_cuts_stream(tmp_path):
    """Pieces arrive as cNN/piece.NN folders that stay on the host between calls; a total that is an exact multiple
    of the piece makes no empty piece; an empty file is written; a piece cut short by an interrupted call is appended
    again whole; a stream joined from another cut is refused."""
    (tmp_path / "a.bin").write_bytes(os.urandom(8192))
    (tmp_path / "empty.txt").write_bytes(b"")
    manifest = cut([("a.bin", str(tmp_path / "a.bin")), ("empty.txt", str(tmp_path / "empty.txt"))],
                   str(tmp_path / "out"), 4096)
    assert manifest["pieces"] == 2 and sorted(os.listdir(tmp_path / "out")) == ["c00", "c01", "meta"]
    host, stream, to = tmp_path / "host", str(tmp_path / "s.bin"), str(tmp_path / "in")
    shutil.copytree(tmp_path / "out" / "meta", host / "meta")
    shutil.copytree(tmp_path / "out" / "c00", host / "c00")
    assert join(str(host), stream, to) == []
    with open(stream, "ab") as s:   # the next call died halfway through appending piece 1
        s.write(open(tmp_path / "out" / "c01" / "piece.01", "rb").read()[:1000])
    shutil.copytree(tmp_path / "out" / "c01", host / "c01")
    assert join(str(host), stream, to) == ["a.bin", "empty.txt"]
    assert open(os.path.join(to, "a.bin"), "rb").read() == (tmp_path / "a.bin").read_bytes()
    assert os.path.getsize(os.path.join(to, "empty.txt")) == 0
    (tmp_path / "b.bin").write_bytes(os.urandom(100))
    cut([("b.bin", str(tmp_path / "b.bin"))], str(tmp_path / "other"), 4096)
    with pytest.raises(SystemExit, match="was joined from another cut"):
        join(str(tmp_path / "other"), stream, to)
