"""New tools into a trained model, without redoing every stage: their tokens are added after the model's own (no old
token moves, no old row changes), then one short continual stage trains the same adapter on the new tools'
documentation and retrieval views (real queries and trajectories when given) plus a replay of the parent's stage files.

    toolgen-add-tools --model DIR/agent_tuning --api-catalog NEW.jsonl --out DIR/added_tools
        [--queries FILE ...] [--trajectories FILE_OR_DIR ...] [--replace-docs] [--config FILE] [--set KEY=VALUE ...]
        [--data-out DIR (default <out>.data)] [--parent-data DIR] [--prepare-only] [--resume | --overwrite]
    (also python -m toolgen.add_tools; the training itself is toolgen/train.py --stage add_tools, one loop for all)

The data folder (--data-out) is a prepared folder of the whole catalog, old and new tools: toolgen.evaluate and
toolgen.agent read it as any other, and a later addition replays its stage files (each addition on the last).
What goes into it: toolgen/add_tools_data.py.
"""

import argparse
import os
import sys

from toolgen import checkpoint
from toolgen.add_tools_data import DATA_FILES, AddToolsError, build_outputs
from toolgen.config import ADD_TOOLS, ConfigError, load_config
from toolgen.data.toolbench import DataError, read_api_jsonl


def parse_args(argv):
    p = argparse.ArgumentParser(prog="toolgen-add-tools", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="STAGE_DIR", help="the finished stage folder to add tools to")
    p.add_argument("--api-catalog", required=True, metavar="NEW.jsonl",
                   help="the new APIs, JSON Lines (toolgen-prepare's --api-catalog format)")
    p.add_argument("--out", required=True, metavar="DIR", help="the new stage folder")
    p.add_argument("--queries", action="append", default=[], help="query file (G1_query.json style); repeatable")
    p.add_argument("--trajectories", action="append", default=[], help="trajectory file or folder; repeatable")
    p.add_argument("--query-writer-cache", metavar="FILE",
                   help="the llm view of the new tools (llm in add_tools.views): requests an instruct model wrote "
                        "from their documentation before (python -m toolgen.query_writer, or toolgen-prepare's "
                        "query_writer.jsonl); every new API must be in it")
    p.add_argument("--writer-queries-per-api", type=int, default=3, metavar="N",
                   help="llm view: the requests per API the cache's answers were asked for (default 3)")
    p.add_argument("--replace-docs", action="store_true",
                   help="a new API with the tool and API name of an existing one replaces its documentation (the "
                        "token is kept, its memorization retrained); without it such a collision stops the run")
    p.add_argument("--config", help="training config (default: the config.json the --model stage ran with)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set stages.add_tools.epochs=2 --set add_tools.replay_fraction=0.3")
    p.add_argument("--data-out", help="the prepared folder of the whole catalog (default: <out>.data)")
    p.add_argument("--parent-data", help="the parent's prepared folder (default: the folder of the data file its "
                                         "stage.json names)")
    p.add_argument("--prepare-only", action="store_true",
                   help="write the data folder, train nothing (then: train.py --stage add_tools --parent ...)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished --out and its checkpoints")
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.prepare_only:   # every process would write the data
        p.error("several processes: write the data once with --prepare-only, then accelerate launch toolgen/train.py "
                "--stage add_tools --parent STAGE_DIR --data-dir DATA_OUT (README: Adding tools to a trained model)")
    args.out = os.path.normpath(args.out)
    args.data_out = os.path.normpath(args.data_out or args.out + ".data")
    if os.path.abspath(args.data_out).startswith(os.path.abspath(args.out) + os.sep):
        p.error(f"--data-out {args.data_out} is inside --out, which is replaced whole when the stage finishes")
    return args


def _load(path, what):
    return checkpoint.read_json(path, AddToolsError, f" is missing: {what}")


def read_parent(model_dir, parent_data=None):
    """The stage folder tools are added to, and the prepared folder it was trained from (its stage.json's data file
    names it): {"dir", "info", "tokens", "data_dir", "prepared"}. Everything that can be missing is checked here."""
    if not os.path.isdir(model_dir):
        raise AddToolsError(f"--model {model_dir}: not a folder")
    needed = "--model takes a finished stage folder"
    info = _load(os.path.join(model_dir, "stage.json"), f"{needed} (stage.json is written last)")
    tokens = _load(os.path.join(model_dir, "tool_tokens.json"), needed)
    if not os.path.isfile(os.path.join(model_dir, "adapter", "adapter_config.json")):
        raise AddToolsError(f"{model_dir}/adapter/adapter_config.json is missing: {needed}")
    data_dir = parent_data or os.path.dirname(str(info.get("data_file") or ""))
    if not data_dir:
        raise AddToolsError(f"{model_dir}/stage.json names no data file: pass the parent's prepared folder with "
                            "--parent-data")
    named_by = "given by --parent-data" if parent_data else f"named by {model_dir}/stage.json"
    prepared = _load(os.path.join(data_dir, "tool_tokens.json"),
                     f"the parent's prepared folder ({named_by}) has moved or is gone: pass it with --parent-data")
    if prepared.get("tokens") != tokens:
        raise AddToolsError(f"{data_dir}/tool_tokens.json does not list the tokens {model_dir} was trained with: "
                            "not its prepared folder (pass the right one with --parent-data)")
    return {"dir": model_dir, "info": info, "tokens": tokens, "data_dir": data_dir, "prepared": prepared}


def check_earlier_run(args):
    """A finished --out or checkpoints: decided before the data is written, as train.py would decide it after."""
    ckpt_root = args.out + ".checkpoints"
    if args.resume:
        if not checkpoint.latest_checkpoint(ckpt_root):
            raise checkpoint.CheckpointError(f"--resume: no complete checkpoint in {ckpt_root}; run without --resume")
    elif not args.prepare_only:
        checkpoint.earlier_run(args.out, ckpt_root, ADD_TOOLS.name, {}, False, args.overwrite)


def check_paths(args, parent):
    """--out and --data-out are replaced whole: never the parent's folders, and --data-out may hold only what this
    command writes (or be absent)."""
    data_out = args.data_out
    same = os.path.samefile if os.path.exists(args.out) else (lambda a, b: False)
    if same(args.out, parent["dir"]):
        raise AddToolsError(f"--out {args.out} is the --model folder: the addition is a new stage folder")
    if os.path.isdir(data_out) and os.path.samefile(data_out, parent["data_dir"]):
        raise AddToolsError(f"--data-out {data_out} is the parent's prepared folder, which the parent still needs: "
                            "give another")
    if os.path.exists(data_out) and not os.path.isdir(data_out):
        raise AddToolsError(f"--data-out {data_out}: not a folder")
    others = sorted(set(os.listdir(data_out)) - set(DATA_FILES)) if os.path.isdir(data_out) else []
    if others:
        raise AddToolsError(f"--data-out {data_out} holds files this command does not write ({', '.join(others[:3])}); "
                            "it is replaced whole, so give a new folder")


def write_data(outputs, data_out):
    """Every file into one atomic folder; the report (with the other files' hashes) last."""
    with checkpoint.atomic_folder(data_out) as tmp:
        for name, obj in outputs.items():
            checkpoint.write_json(os.path.join(tmp, name), obj, indent=None if isinstance(obj, list) else 1)
        report = outputs["add_tools_report.json"]
        report["data_hashes"]["written"] = {name: checkpoint.file_sha256(os.path.join(tmp, name))
                                            for name in outputs if name != "add_tools_report.json"}
        checkpoint.write_json(os.path.join(tmp, "add_tools_report.json"), report)


def training_config(args, parent):
    """The config file and overrides the stage runs with: --config, else the parent's own config.json. The base model
    must be the parent's: the adapter only fits it."""
    config = args.config or os.path.join(parent["dir"], "config.json")
    cfg = load_config(config, args.overrides)
    if cfg.model.name != parent["info"].get("base_model", cfg.model.name):
        raise AddToolsError(f"{config}: model.name {cfg.model.name!r} is not the base of {parent['dir']} "
                            f"({parent['info']['base_model']!r})")
    return config, cfg


def prepare_data(args):
    """Checks, then the data folder -> (config path, its report). Nothing is written when a check fails."""
    parent = read_parent(args.model, args.parent_data)
    config, cfg = training_config(args, parent)
    check_earlier_run(args)
    check_paths(args, parent)
    apis = read_api_jsonl(args.api_catalog)   # an empty catalog is a DataError naming the file
    outputs = build_outputs(parent, apis, args, cfg.add_tools)
    write_data(outputs, args.data_out)
    return config, outputs["add_tools_report.json"]


def train(args, config):
    """The continual stage through train.py's loop (same update, checkpoints, resume, logs)."""
    from toolgen import train as train_mod
    argv = ["--stage", ADD_TOOLS.name, "--parent", args.model, "--config", config,
            "--output-dir", os.path.dirname(os.path.abspath(args.out)), "--folder", os.path.basename(args.out),
            "--data-dir", args.data_out] + [a for o in args.overrides for a in ("--set", o)]
    return train_mod.main(argv + ["--resume"] * args.resume + ["--overwrite"] * args.overwrite)


def main(argv=None):
    args = parse_args(argv)
    try:
        config, report = prepare_data(args)
    except (AddToolsError, DataError, ConfigError, OSError, checkpoint.CheckpointError) as e:
        sys.exit(f"toolgen-add-tools: error: {e}")
    print(f"toolgen-add-tools: {len(report['tools_added'])} tools added, {len(report['tools_replaced'])} "
          f"documentations replaced on {report['parent']['path']} (stage {report['parent']['stage']}); "
          f"{report['examples']['new']} new + {report['examples']['replay']} replayed examples -> {args.data_out}",
          flush=True)
    if args.prepare_only:
        return None
    from toolgen.train import StageError
    try:
        return train(args, config)
    except (StageError, ConfigError, checkpoint.CheckpointError) as e:
        sys.exit(f"toolgen-add-tools: error: {e}")


if __name__ == "__main__":
    main()
