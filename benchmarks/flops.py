"""The work a training step does, in FLOPs, for the MFU of benchmarks/throughput_report.py.

Per non-pad token of a LoRA step (frozen base, trainable adapters and tool-token rows):
  4 * N_frozen            frozen linear weights of the decoder layers: forward (2N) and the gradient of their input
                          (2N); no weight gradient
  + 6 * N_lora            LoRA A and B: forward, input gradient and weight gradient
  + attention             causal, per layer and sequence of n tokens: forward QK^T and PV at half of n x n x d each
                          (2 * n^2 * d FLOPs), backward twice that: 6 * layers * d * sum(n^2) / sum(n) per token
  + head * targets/token  the LM head only where a target is predicted: forward and input gradient over the whole
                          vocabulary (4 * V * d) plus the weight gradient of the tool rows (2 * tools * d)
Embedding lookups, norms, activations and the optimizer are not counted (no matmul, or negligible). The same useful
work is credited to every system, so MFU ratios are throughput ratios; a system that computes logits at every
position does more arithmetic than this and gets no credit for it.
MFU = FLOPs per token x tokens/s / peak, against the card's datasheet dense bf16 peak (no sparsity) and, as a second
figure, against the bf16 matmul rate measured on the same card.
"""

DATASHEET_BF16_DENSE = (  # (words in the card's name, FLOP/s): NVIDIA datasheets, dense bf16 tensor-core peak
    (("H100", "PCIe"), 756e12),
    (("H100",), 989.4e12),   # SXM5 (the "H100 80GB HBM3" of these machines)
    (("H200",), 989.4e12),
    (("A100",), 312e12),
)

LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


def datasheet_peak(card):
    for words, peak in DATASHEET_BF16_DENSE:
        if all(w in card for w in words):
            return peak
    return None


def linear_shapes(config):
    """(in, out) of each linear layer of one Llama-style decoder layer."""
    d, f = config["hidden_size"], config["intermediate_size"]
    hd = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}


def flops_per_token(config, lora_r, vocab, tools, lengths, targets):
    """FLOPs per non-pad token (module docstring). config: the model's config.json as a dict; vocab: the real
    vocabulary (tool tokens included, padding rows not); lengths: tokens of each example; targets: target tokens
    of each example."""
    layers, d = config["num_hidden_layers"], config["hidden_size"]
    shapes = linear_shapes(config).values()
    n_frozen = layers * sum(i * o for i, o in shapes)
    n_lora = layers * sum(lora_r * (i + o) for i, o in shapes)
    d_attn = linear_shapes(config)["q"][1]   # heads x head dim
    tokens = sum(lengths)
    attention = 6 * layers * d_attn * sum(n * n for n in lengths) / tokens
    head = (4 * vocab * d + 2 * tools * d) * sum(targets) / tokens
    return {"frozen": 4 * n_frozen, "lora": 6 * n_lora, "attention": attention, "head": head,
            "total": 4 * n_frozen + 6 * n_lora + attention + head, "n_frozen": n_frozen, "n_lora": n_lora}
