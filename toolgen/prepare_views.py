"""toolgen-prepare's retrieval views: their options, their examples (the texts: toolgen/data/views.py; the llm view's
queries: toolgen/query_writer.py), and the query writer's cache carried from the old --out to the new one.

Kept out of prepare.py so that the command reads as the sources -> stage files flow; prepare() calls view_examples
and main() the rest.
"""

import argparse
import os

from toolgen import query_writer
from toolgen.data import views as view_lib
from toolgen.data.toolbench import DataError


def view_examples(catalog, names, views, seed, multi_rounds, writer, writer_cache, held_out, report):
    """(examples, counts per view, the query writer's cache records or None, its report or None) of the views
    (toolgen/data/views.py; the llm view's queries come from toolgen/query_writer.py)."""
    llm, records, writer_report = None, None, None
    if "llm" in views:
        apis = [catalog.apis[k] for k in sorted(catalog.apis)]
        llm, records, writer_report = query_writer.llm_view(apis, writer or query_writer.WriterOptions(), writer_cache)
    queries = view_lib.view_queries(catalog, views, seed, multi_rounds, llm)
    examples, counts = view_lib.view_examples(queries, names, held_out, report)
    return examples, counts, records, writer_report


def views_arg(text):
    """--views: argparse shows the message of an ArgumentTypeError, not of a DataError."""
    try:
        return view_lib.parse_views(text)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p):
    """The stage-2 views (toolgen/data/views.py), the query writer (toolgen/query_writer.py), the validation split."""
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the non-test queries held out as retrieval_val.json (0: none; default 0.1)")
    p.add_argument("--agent-val-fraction", type=float, default=None,
                   help="fraction of the agent sources' training requests held out as agent_e2e_val.json "
                        "(default: --val-fraction)")
    p.add_argument("--views", type=views_arg, default=(), metavar="LIST",
                   help=f"comma list of retrieval views written from the catalog: {', '.join(view_lib.VIEWS)} "
                        "(README: Data preparation)")
    p.add_argument("--multi-queries-per-api", type=int, default=1, metavar="N",
                   help="multi_tool / multi_category: each API is in about N requests of each (default 1)")
    p.add_argument("--query-writer", metavar="MODEL", help="llm view: the instruct model that writes the queries "
                                                           "(hub id, folder, gguf:..., gguf-file:PATH, tiny)")
    p.add_argument("--writer-queries-per-api", type=int, default=query_writer.WriterOptions.queries_per_api,
                   metavar="N", help="llm view: requests asked for per API (default 3)")
    p.add_argument("--writer-temperature", type=float, default=0.0,
                   help="llm view: 0 = greedy (default); > 0 = sampling seeded by --seed")
    p.add_argument("--writer-max-new-tokens", type=int, default=query_writer.WriterOptions.max_new_tokens, metavar="N",
                   help="llm view: answer length limit in tokens (default 192)")
    p.add_argument("--writer-batch-size", type=int, default=query_writer.WriterOptions.batch_size, metavar="N",
                   help="llm view: prompts generated at once (default 16)")
    p.add_argument("--query-writer-cache", metavar="FILE",
                   help="llm view: answers written before (python -m toolgen.query_writer), used before the model")


def check_arguments(p, args):
    if (args.query_writer or args.query_writer_cache) and "llm" not in args.views:
        p.error("--query-writer and --query-writer-cache write the llm view: add llm to --views")
    for flag, value in (("--val-fraction", args.val_fraction), ("--agent-val-fraction", args.agent_val_fraction)):
        if value is not None and not 0 <= value < 1:
            p.error(f"{flag} {value}: give a fraction in [0, 1)")


def writer_options(args):
    return query_writer.WriterOptions(args.query_writer, args.writer_queries_per_api, args.writer_temperature, args.seed,
                                      args.writer_max_new_tokens, args.writer_batch_size)


def read_old_cache(out_dir):
    """The cache in the --out folder about to be replaced: its answers are used again, so a rerun needs no model."""
    path = os.path.join(out_dir, query_writer.CACHE_FILE)
    return query_writer.read_cache(path) if os.path.isfile(path) else []
