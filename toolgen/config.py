"""Configuration: one dataclass per concern, loaded from YAML, every key overridable as `section.key=value`.

Also THE stage table: the only place that names the stages, their files, folders and parents. The shell scripts ask
it through `python -m toolgen.config ...` (see `_cli` at the bottom). STAGES is the chain that the pipelines run by
default; ALL_STAGES adds the stages run on demand (add_tools: new tools into a trained model, toolgen/add_tools.py).
"""

import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field

import yaml


@dataclass(frozen=True)
class Stage:
    name: str
    file: str            # the stage file in the prepared data folder
    folder: str          # the output folder under --output-dir
    parent: str | None   # the stage whose adapter this one continues


STAGES = {s.name: s for s in (
    Stage("memorization", "tool_memorization.json", "tool_memorization", None),
    Stage("retrieval", "retrieval_training.json", "retrieval_training", "memorization"),
    Stage("agent", "agent_tuning.json", "agent_tuning", "retrieval"),
)}
# Not in the chain: a pipeline runs it only when --stages names it. Its parent here is the default one (the chain's last
# stage, in a pipeline's output folder); toolgen-add-tools and train.py --parent continue any finished stage folder,
# an earlier addition included.
ADD_TOOLS = Stage("add_tools", "add_tools.json", "added_tools", "agent")
ALL_STAGES = {**STAGES, ADD_TOOLS.name: ADD_TOOLS}


class ConfigError(ValueError):
    """A bad config file or value: the message names the file and the key."""


@dataclass
class ModelConfig:
    name: str = "gguf:smollm2"        # hub id, local folder, "gguf:smollm2" (embedded default), "tiny" / "tiny-qwen2"
    #                                   (tests),
    #                                   "random:llama-3.2-1b" (the reference shape with random weights, for speed runs)
    dtype: str = "auto"               # auto (bf16 where supported, else fp32) | bfloat16 | float32 | float16
    attn_implementation: str = "sdpa"  # sdpa | eager | flex_attention | varlen (packed rows: toolgen/attention.py)
    #                                    | flash_attention_2 (when installed)
    quantization: str = "none"        # none | 4bit (bitsandbytes NF4, QLoRA)
    gradient_checkpointing: bool = False
    tie_word_embeddings: bool = True  # only for the tiny model built in code


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list = "all-linear"
    recompute_dropout: bool = False   # with train.compile: the dropout mask drawn again in the backward pass from a
    #                                   seed, so each LoRA input is kept once, not as a mask and a copy per module
    #                                   (toolgen/lora_dropout.py); the same dropout, another random stream than peft's.
    #                                   Off: on the agent shape (4 x H200) it left peak memory and speed as they were


@dataclass
class DataConfig:
    dir: str = ""                     # stage files; default <output_dir>/data
    toolbench: str = ""               # raw data for toolgen-prepare; empty = the shipped sample
    prepare_args: str = ""            # extra arguments for toolgen-prepare (e.g. --api-catalog FILE)


@dataclass
class StageConfig:
    epochs: float = 1
    learning_rate: float = 2e-4
    max_length: int = 512
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int = -1               # > 0 stops early (smoke runs)
    gradient_checkpointing: bool = False  # this stage only (e.g. the agent's long contexts); model.* turns it on for all
    long_examples: str = "cut"        # cut: an example longer than max_length keeps its start; fit: one with tool
    #                                   results also trains the answers cut off, on its history shortened as the agent
    #                                   loop shortens it (old results first: collate.fitted_tail)


@dataclass
class TrainConfig:
    seed: int = 42
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"          # adamw | sgd (plain SGD: its update shows the gradient's scale, used in tests)
    lr_scheduler: str = "cosine"      # cosine (with warm-up) | constant (with warm-up)
    logging_steps: int = 5
    save_steps: int = 0               # checkpoint every N steps and at the end; 0: no checkpoints
    num_workers: int = 0              # > 0: batches collated in worker processes, ahead of the step; on a GPU the
    #                                   loader pins them for an asynchronous copy. 0: the GPU waits for each collation
    #                                   (~5 ms per agent micro-batch on an H200 host: benchmarks/results/throughput.md)
    gc_every: int = 50                # Python's cyclic garbage collector runs every N updates (young generations), not
    #                                   when its counters say; a pause in one process stalls every process of an
    #                                   update (torchtitan's gc_freq). 0: Python's own schedule
    group_by_length: bool = False     # batches of similar lengths (less padding); the order is still shuffled
    packing: bool = False             # a batch as one row without padding, examples kept apart by a document mask
    #                                   (best with model.attn_implementation=varlen on GPU: no mask; sdpa works too)
    pack_to_multiple_of: int = 64     # packed row length rounded up to this: fewer shapes for compiled kernels
    balance_processes: bool = True    # several processes: each update's examples re-dealt so every process gets about
    #                                   as many tokens (toolgen/balance.py); the same update, the slowest share shorter
    sparse_tool_rows: bool = True     # gradient for the tool-token rows only (toolgen/tool_rows.py), same result
    chunked_loss: bool = False        # the LM head and its cross-entropy chunk by chunk, gradients at once: no
    #                                   [targets x vocab] logits at the step's peak (toolgen/head_loss.py), same result;
    #                                   a third less reserved memory on the agent shape, ~9 % slower (one H200 run)
    compile: bool = False             # torch.compile each decoder layer (accelerate's regional compilation)
    compile_mode: str = "default"     # torch.compile's mode; the CUDA-graph modes are refused (see REFUSED)
    compile_regional: bool = True     # false: the whole model as one graph (one call per step; Llama-3.2-1B did not
    #                                   finish compiling in 5 min on an H200: benchmarks/results/throughput.md)


@dataclass
class RetrievalConfig:
    """Hybrid tool ranking at inference (toolgen/retrieval.py): the model's tool scores fused with a retriever prior."""
    prior: str = "bm25+dense"         # none | bm25 | dense | bm25+dense: the retrievers the prior may use
    fusion: str = "rrf"               # rrf | weighted
    rrf_k: float = 10.0               # rrf: 1 / (k + rank)
    prior_weight: float = 1.0         # w: the prior's share (rrf: of its reciprocal ranks; weighted: of its z-scores)
    tune: bool = True                 # choose prior (among those named), fusion, k and w on retrieval_val.json, never
    #                                   on test; the values above are used when false or without a validation split


@dataclass
class AddToolsConfig:
    """The data of the add_tools stage (toolgen/add_tools.py); its steps and learning rate are stages.add_tools."""
    replay_fraction: float = 0.5      # share of the stage's examples drawn from the parent's stage files (forgetting)
    memorization_repeats: int = 3     # each new tool's documentation example this many times (one short stage)
    views: str = "name,ask,params,multi_tool,multi_category"   # retrieval views of the new tools (multi: new only;
    #                                                             llm: read from toolgen-add-tools --query-writer-cache)
    multi_queries_per_api: int = 1
    train: str = "all"   # all: the adapter's LoRA and every tool row; new_rows: only the new tools' rows, so the
    #                      parent's weights stay bit-identical and an old tool's score moves only where a new tool
    #                      outranks it (needs train.weight_decay 0: AdamW decays rows that get no gradient);
    #                      new_rows_head: the same, the rows learning through the LM head alone (the decoder runs
    #                      without gradient: a step costs about a forward pass; models.train_new_rows_only);
    #                      new_rows_lora: the new rows, and the LoRA weights at lora_learning_rate (the rows alone
    #                      learn the documentation but not how requests word a need; the old rows stay frozen)
    lora_learning_rate: float = 0.0   # new_rows_lora's rate for the LoRA weights (the rows use the stage's)
    distill_weight: float = 0.0       # > 0: + weight * KL(parent || stage) over the old tools at every tool target
    #                                   (toolgen/distill.py: keeps their order while the LoRA moves; train all or
    #                                   new_rows_lora; one more forward pass per micro-batch)
    distill_new_tools: bool = False   # with distill_weight: at an old tool's target the teacher gives the new tools
    #                                   no mass, so the KL also pulls their share down there (they climbed over old
    #                                   tools on old queries: toolgen/distill.py); at a new tool's target, as before
    lora_layers: int = 0              # new_rows_lora: > 0 trains the LoRA of the last N decoder layers only (0: all);
    #                                   the layers below run without gradient and the teacher reruns the N alone
    #                                   (models.train_new_rows_only, distill.TopLayers: a cheaper step)
    align_new_rows: bool = False      # at the stage's end, scale the new tools' LM-head rows to the old rows' mean
    #                                   norm (weight aligning: models.align_new_rows), so that rows trained in one
    #                                   short stage do not outscore old tools on the old tools' requests
    parent_scores: bool = False       # new_rows_lora with lora_layers: the old tools keep the parent's scores exactly
    #                                   (its last layers rerun beside the stage's), the new ones get the stage's
    #                                   (toolgen/parent_scores.py; the stage folder keeps what inference needs)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    add_tools: AddToolsConfig = field(default_factory=AddToolsConfig)
    stages: dict = field(default_factory=lambda: {s: StageConfig() for s in ALL_STAGES})

    def to_dict(self):
        return dataclasses.asdict(self)


# Keys whose value must be one of a few words; checked at load, so a typo never trains with a silent default.
CHOICES = {
    "model.dtype": ("auto", "bfloat16", "float32", "float16"),
    "model.attn_implementation": ("sdpa", "eager", "flex_attention", "varlen", "flash_attention_2"),
    "model.quantization": ("none", "4bit"),
    "train.optimizer": ("adamw", "sgd"),
    "train.lr_scheduler": ("cosine", "constant"),
    "train.compile_mode": ("default", "max-autotune-no-cudagraphs"),
    "retrieval.prior": ("none", "bm25", "dense", "bm25+dense"),
    "retrieval.fusion": ("rrf", "weighted"),
    "add_tools.train": ("all", "new_rows", "new_rows_head", "new_rows_lora"),
}
CHOICES.update({f"stages.{s}.long_examples": ("cut", "fit") for s in ALL_STAGES})
# Values torch accepts that the loop refuses, and why (the error says it).
_CUDA_GRAPHS = ("a CUDA-graph mode: reduce-overhead crashed the loop (SIGSEGV before the first update, torch 2.11, "
                "H200: benchmarks/results/throughput.md, 'How the loop compiles')")
REFUSED = {("train.compile_mode", "reduce-overhead"): _CUDA_GRAPHS,
           ("train.compile_mode", "max-autotune"): _CUDA_GRAPHS}
# Numbers that must be positive (> 0) or not negative (>= 0).
POSITIVE = {"r", "alpha", "learning_rate", "max_length", "per_device_batch_size", "gradient_accumulation_steps",
            "logging_steps", "pack_to_multiple_of", "epochs", "rrf_k", "prior_weight", "memorization_repeats",
            "multi_queries_per_api"}
NOT_NEGATIVE = {"dropout", "weight_decay", "warmup_ratio", "max_grad_norm", "save_steps", "num_workers", "gc_every",
                "seed", "lora_learning_rate", "distill_weight", "lora_layers"}
BELOW_ONE = {"add_tools.replay_fraction"}   # a share in [0, 1): 1 would leave no room for the new tools' examples


def _check(value, kind, key, where):
    """value converted to the field's type, or ConfigError naming the key and the value."""
    def bad(expected):
        return ConfigError(f"{where}: {key}={value!r}: expected {expected}")
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif kind is float:
        if isinstance(value, str):
            try:
                value = float(value)   # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise bad("a string")
    elif typing.get_origin(kind) in (typing.Union, types.UnionType):
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise bad("a string or a list of strings")
    short = key.rsplit(".", 1)[-1]
    if short in POSITIVE and not value > 0:
        raise bad("a value > 0")
    if short in NOT_NEGATIVE and not value >= 0:
        raise bad("a value >= 0")
    if key in BELOW_ONE and not 0 <= value < 1:
        raise bad("a fraction in [0, 1)")
    if key in CHOICES and value not in CHOICES[key]:
        why = f" ({REFUSED[key, value]})" if (key, value) in REFUSED else ""
        raise ConfigError(f"{where}: {key}={value!r}: allowed values are {', '.join(CHOICES[key])}{why}")
    return value


def _build(cls, values, where, prefix=""):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(prefix + k for k in unknown)}; "
                          f"known: {sorted(prefix + k for k in names)}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, where, f"{prefix}{key}.")
        elif key != "stages":
            value = _check(value, hints[key], prefix + key, where)
        kwargs[key] = value
    return cls(**kwargs)


def _set(tree, dotted, value):
    *path, last = dotted.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    tree[last] = value


def load_config(path=None, overrides=()):
    """YAML file + `a.b=c` overrides (values parsed as YAML) -> Config. Unknown keys, values of the wrong type and
    unknown choices are ConfigErrors naming the key, raised here, before any work starts."""
    raw = {}
    where = path or "config"
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, lora, data, train, retrieval, add_tools, "
                              "stages)")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        _set(raw, key.strip(), parsed)
        where = f"{path or 'config'} (with --set overrides)"
    stages = raw.pop("stages", {}) or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{where}: stages: expected a mapping of stage names")
    unknown = set(stages) - set(ALL_STAGES)
    if unknown:
        raise ConfigError(f"{where}: unknown stage(s) {sorted(unknown)}; known: {list(ALL_STAGES)}")
    cfg = _build(Config, raw, where)
    cfg.stages = {s: _build(StageConfig, stages.get(s) or {}, where, f"stages.{s}.") for s in ALL_STAGES}
    if cfg.model.attn_implementation == "varlen" and not cfg.train.packing:
        raise ConfigError(f"{where}: model.attn_implementation=varlen attends within the examples of a packed row: "
                          "it needs train.packing=true")
    if (cfg.add_tools.train == "new_rows_lora") != (cfg.add_tools.lora_learning_rate > 0):
        raise ConfigError(f"{where}: add_tools.lora_learning_rate={cfg.add_tools.lora_learning_rate} with "
                          f"add_tools.train={cfg.add_tools.train}: it is the LoRA weights' rate of new_rows_lora only "
                          "(> 0 there, 0 otherwise)")
    if cfg.add_tools.distill_new_tools and not cfg.add_tools.distill_weight:
        raise ConfigError(f"{where}: add_tools.distill_new_tools=true needs add_tools.distill_weight > 0 (it widens "
                          "the distillation's KL to the new tools)")
    if cfg.add_tools.lora_layers and cfg.add_tools.train != "new_rows_lora":
        raise ConfigError(f"{where}: add_tools.lora_layers={cfg.add_tools.lora_layers} with add_tools.train="
                          f"{cfg.add_tools.train}: it chooses the LoRA layers that new_rows_lora trains (0 otherwise)")
    if cfg.add_tools.distill_weight and cfg.add_tools.train not in ("all", "new_rows_lora"):
        raise ConfigError(f"{where}: add_tools.distill_weight={cfg.add_tools.distill_weight} with add_tools.train="
                          f"{cfg.add_tools.train}: the LoRA and the old rows are frozen there, so the old tools' "
                          "scores cannot move (train all or new_rows_lora, or distill_weight 0)")
    if cfg.add_tools.parent_scores and not (cfg.add_tools.lora_layers and not cfg.add_tools.distill_weight):
        raise ConfigError(f"{where}: add_tools.parent_scores=true needs add_tools.train=new_rows_lora with "
                          f"add_tools.lora_layers > 0 (it is {cfg.add_tools.lora_layers}: the parent reruns those "
                          f"layers) and add_tools.distill_weight 0 (it is {cfg.add_tools.distill_weight}: the old "
                          "tools' scores are the parent's already)")
    if cfg.add_tools.train != "all" and cfg.train.weight_decay:
        raise ConfigError(f"{where}: add_tools.train={cfg.add_tools.train} needs train.weight_decay=0 (it is "
                          f"{cfg.train.weight_decay}): AdamW would decay the parent's rows, which get no gradient")
    return cfg


def flatten(tree, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted names --set uses."""
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def data_dir(cfg, output_dir):
    """Where the stage files are: data.dir when the config names one, else <output_dir>/data."""
    return cfg.data.dir or os.path.join(output_dir, "data")


def _cli(argv):
    """For the shell scripts, so that they never spell a stage themselves:
        python -m toolgen.config stages                   -> memorization retrieval agent (the chain)
        python -m toolgen.config stages --all             -> the chain, then the stages run on demand (add_tools)
        python -m toolgen.config folder STAGE             -> its output folder
        python -m toolgen.config parent STAGE             -> its parent stage (empty line when none)
        python -m toolgen.config file STAGE               -> its stage file in a prepared folder
        python -m toolgen.config check CONFIG             -> nothing; exit 2 with the error when the config is bad
        python -m toolgen.config data-dir CONFIG OUT_DIR  -> the stage files' folder
    """
    usage = _cli.__doc__
    if not argv:
        sys.exit(usage)
    verb, rest = argv[0], argv[1:]
    try:
        if verb == "stages" and rest in ([], ["--all"]):
            print(" ".join(ALL_STAGES if rest else STAGES))
        elif verb in ("folder", "parent", "file") and len(rest) == 1:
            if rest[0] not in ALL_STAGES:
                raise ConfigError(f"unknown stage {rest[0]!r}; known: {', '.join(ALL_STAGES)}")
            print(getattr(ALL_STAGES[rest[0]], verb) or "")
        elif verb == "check" and len(rest) == 1:
            load_config(rest[0])
        elif verb == "data-dir" and len(rest) == 2:
            print(data_dir(load_config(rest[0]), rest[1]))
        else:
            sys.exit(usage)
    except ConfigError as e:
        print(f"toolgen: config error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _cli(sys.argv[1:])
