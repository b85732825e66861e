"""Readers of the input sources (toolbench.py; complexfuncbench.py and nestful.py over gold.py), the stage example
builders (stages.py; what a step really holds: quality.py), the agent sources in a prepared folder (agent_sources.py)
and the shipped sample."""

import os

# The shipped sample, as data: catalog.jsonl (one API a line, the --api-catalog format), instruction/*.json (queries)
# and answer/**/*.json (DFS trajectories). toolgen-prepare reads it when given no input; the tiny test model's
# tokenizer is trained on its files (models.tiny_folder), which is why it lives here and not in prepare.py.
SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "sample")
