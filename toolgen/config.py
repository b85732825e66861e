"""Configuration: one dataclass per concern, loaded from YAML, every key overridable as `section.key=value`."""

import dataclasses
from dataclasses import dataclass, field

import yaml

STAGES = {  # stage -> (stage file, output folder, parent stage)
    "memorization": ("tool_memorization.json", "tool_memorization", None),
    "retrieval": ("retrieval_training.json", "retrieval_training", "memorization"),
    "agent": ("agent_tuning.json", "agent_tuning", "retrieval"),
}


@dataclass
class ModelConfig:
    name: str = "gguf:smollm2"        # hub id, local folder, "gguf:smollm2" (embedded default), "tiny" (tests),
    #                                   "random:llama-3.2-1b" (the reference shape with random weights, for speed runs)
    dtype: str = "auto"               # auto (bf16 where supported, else fp32) | bfloat16 | float32
    attn_implementation: str = "sdpa"  # flash_attention_2 only when installed and asked for
    quantization: str = "none"        # none | 4bit (bitsandbytes NF4, QLoRA)
    gradient_checkpointing: bool = False
    tie_word_embeddings: bool = True  # only for the tiny model built in code


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list = "all-linear"


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


@dataclass
class TrainConfig:
    seed: int = 42
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"          # adamw | sgd (plain SGD: its update shows the gradient's scale, used in tests)
    lr_scheduler: str = "cosine"      # cosine (with warm-up) | constant
    logging_steps: int = 5
    save_steps: int = 0               # checkpoint every N steps and at the end; 0: no checkpoints
    num_workers: int = 0
    group_by_length: bool = False     # batches of similar lengths (less padding); the order is still shuffled
    packing: bool = False             # a batch as one row without padding, examples kept apart by a document mask
    #                                   (best with model.attn_implementation=flex_attention on GPU; sdpa works too)
    pack_to_multiple_of: int = 64     # packed row length rounded up to this: fewer shapes for compiled kernels
    sparse_tool_rows: bool = True     # gradient for the tool-token rows only (toolgen/tool_rows.py), same result
    compile: bool = False             # torch.compile each decoder layer (accelerate's regional compilation)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: dict = field(default_factory=lambda: {s: StageConfig() for s in STAGES})

    def to_dict(self):
        return dataclasses.asdict(self)


def _build(cls, values, where):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, f"{where}.{key}")
        elif isinstance(default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def _set(tree, dotted, value):
    *path, last = dotted.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
    tree[last] = value


def load_config(path=None, overrides=()):
    """YAML file + `a.b=c` overrides (values parsed as YAML) -> Config. Unknown keys are errors, not silently ignored."""
    raw = {}
    if path:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        _set(raw, key.strip(), yaml.safe_load(value))
    stages = raw.pop("stages", {}) or {}
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"{path}: unknown stage(s) {sorted(unknown)}; known: {list(STAGES)}")
    cfg = _build(Config, raw, path or "config")
    cfg.stages = {s: _build(StageConfig, stages.get(s, {}), f"{path}: stages.{s}") for s in STAGES}
    return cfg


def data_dir(cfg, output_dir):
    """Where the stage files are: data.dir when the config names one, else <output_dir>/data."""
    import os
    return cfg.data.dir or os.path.join(output_dir, "data")


if __name__ == "__main__":   # for the shell scripts: python -m toolgen.config CONFIG OUTPUT_DIR -> the data folder
    import sys
    print(data_dir(load_config(sys.argv[1]), sys.argv[2]))
