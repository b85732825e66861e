"""Start-up notices that mean nothing to a user, silenced at their source. Imported first by the commands (train,
evaluate, agent), so that a stage prints its own lines and a progress bar, not the libraries' internals.

- bitsandbytes, on a CPU with AVX512-BF16, tries to fetch a faster 4-bit CPU kernel from the hub and warns when it
  cannot (we are offline by design; the built-in kernel is used and is correct).
- DeepSpeed warns "Setting accelerator to CPU" when it has to guess: we tell it (DS_ACCELERATOR) when there is no GPU.
- accelerate notes at every checkpoint that it stored the tied embedding / LM head once ("Removed shared tensor"):
  expected, since they are one tensor; reloading restores the tie.
- JAX, where installed and imported by a library, takes 75 % of the GPU's memory at its first use: we never use
  JAX, so it may not pre-allocate (three evaluation processes on one GPU failed with out-of-memory before this).
- transformers and datasets draw a progress bar for every load, save, split and map of a few milliseconds.
"""

import logging
import os

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("accelerate.utils.other").addFilter(lambda r: "Removed shared tensor" not in r.getMessage())

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import datasets  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

transformers_logging.disable_progress_bar()
datasets.disable_progress_bars()
