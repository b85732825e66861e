"""Folders that are complete or absent: stage folders, checkpoints, prepared data, cached models, reports.

`atomic_folder` is the one way anything here writes a folder: write into `<final>.tmp`, then swap it in. Checkpoint
save / find / resume (with our own copy of the torch RNG) live here too, so `train.py` keeps only the loop.
"""

import contextlib
import json
import os
import shutil


@contextlib.contextmanager
def atomic_folder(final):
    """Yield a fresh temporary folder beside `final`; when the block ends without an error it replaces `final` whole.

    An old `final` is first moved aside and removed after the swap, so a reader never sees old and new files mixed
    (a plain os.replace cannot replace a non-empty folder). On an error, in the block or in the swap itself, the
    temporary folder is removed and `final` is left as it was.
    """
    final = os.path.normpath(final)
    tmp, old = final + ".tmp", final + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    try:
        if os.path.exists(final):
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:   # the old folder was moved aside already: put it back before giving up
            if os.path.exists(old) and not os.path.exists(final):
                os.replace(old, final)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path, obj, indent=1):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
