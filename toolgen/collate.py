"""Tokenization with loss masks, and the padding collator.

A conversation is rendered with the tokenizer's chat template one message at a time: the text that message i adds to
the rendering of messages[:i] is its segment. An assistant segment is split into its header (what
add_generation_prompt renders) and its body; only the bodies of messages with loss=True get labels, so the model
learns the answer and the end-of-turn marker, never the prompt, the role headers or the padding.
"""

import contextlib
import hashlib
import itertools
import os

import torch

from toolgen import attention
from toolgen.loss import IGNORE  # noqa: F401  (re-exported: the collators write it)

# What the tokenized stage files depend on besides the file, the tokenizer and max_length: this module's code. datasets
# fingerprints a map by its function, not by the module functions that function calls, so without this a change of
# the layout here would reuse tokenized files made by the old code.
with open(__file__, "rb") as _f:
    CODE = hashlib.sha256(_f.read()).hexdigest()


def _render(tokenizer, messages, add_generation_prompt=False):
    if not messages and not add_generation_prompt:
        return ""
    return tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                         tokenize=False, add_generation_prompt=add_generation_prompt)


def segment(tokenizer, messages, i, done):
    """What message i adds to `done`, the rendering of messages[:i] -> ([(text, carries_loss)], rendering through i)."""
    out, m = [], messages[i]
    if m["role"] == "assistant":
        header = _render(tokenizer, messages[:i], add_generation_prompt=True)
        if header.startswith(done) and header != done:
            out.append((header[len(done):], False))
            done = header
    full = _render(tokenizer, messages[:i + 1])
    if not full.startswith(done):
        raise ValueError("the chat template does not render conversations prefix by prefix; "
                         "set a template that does (see models.PLAIN_CHAT_TEMPLATE)")
    out.append((full[len(done):], bool(m.get("loss")) and m["role"] == "assistant"))
    return out, full


def _segments(tokenizer, messages, owners=None):
    """[(text, carries_loss)] whose concatenation is the rendering of the whole conversation; `owners`, a list,
    receives the index of the message each segment belongs to."""
    out, done = [], ""
    for i in range(len(messages)):
        parts, done = segment(tokenizer, messages, i, done)
        out += parts
        if owners is not None:
            owners += [i] * len(parts)
    return out


def tokenize_messages(tokenizer, messages, max_length=None):
    """-> {"input_ids", "labels"}. Long examples keep their start; if that would cut every target, they keep their end."""
    segments = _segments(tokenizer, messages)
    return _truncated(*_joined(segments, _encode(tokenizer, segments)), max_length)


def _encode(tokenizer, segments):
    """The token ids of each segment's text, in one tokenizer call: a fast tokenizer encodes the list in one pass
    instead of paying a Python call per segment; the ids are those of one call per segment (tests/test_training.py)."""
    return tokenizer([text for text, _ in segments], add_special_tokens=False)["input_ids"] if segments else []


def _joined(segments, ids):
    input_ids, labels = [], []
    for (_, loss), seg in zip(segments, ids):
        input_ids += seg
        labels += seg if loss else [IGNORE] * len(seg)
    return input_ids, labels


def _truncated(input_ids, labels, max_length):
    if max_length and len(input_ids) > max_length:
        if any(l != IGNORE for l in labels[:max_length]):
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        else:
            input_ids, labels = input_ids[-max_length:], labels[-max_length:]
    return {"input_ids": input_ids, "labels": labels}


def _targets(labels):
    return sum(l != IGNORE for l in labels[1:])   # loss.count_targets: the first label is never predicted


def _tokenized_with_cut(tokenizer, batch, max_length, fit_order=None):
    """A batch of conversations -> tokenize_messages of each (one tokenizer call for all their segments), plus how
    many target tokens each has and how many max_length cut off. With fit_order (an observation order: the stage's
    long_examples is "fit"), a conversation with tool results that max_length cuts also gives the answers cut off as
    a second row, a "tail" (fitted_tail)."""
    owners = [[] for _ in batch]
    segments = [_segments(tokenizer, messages, own) for messages, own in zip(batch, owners)]
    ids = iter(_encode(tokenizer, [seg for segs in segments for seg in segs]))
    out = {"input_ids": [], "labels": [], "targets": [], "targets_cut": [], "tail": []}
    for messages, segs, own in zip(batch, segments, owners):
        seg_ids = [next(ids) for _ in segs]
        input_ids, labels = _joined(segs, seg_ids)
        rows = [_truncated(input_ids, labels, max_length)]
        if fit_order and len(input_ids) > max_length and any(l != IGNORE for l in labels[:max_length]) \
                and any(m["role"] == "tool" for m in messages):
            rows = fitted_tail(tokenizer, messages, segs, seg_ids, own, max_length, fit_order)
        targets, kept = _targets(labels), sum(_targets(row["labels"]) for row in rows)
        for n, row in enumerate(rows):
            for key, value in (*row.items(), ("targets", targets if n == 0 else 0),
                               ("targets_cut", targets - kept if n == 0 else 0), ("tail", n > 0)):
                out[key].append(value)
    return out


def fitted_tail(tokenizer, messages, segments, seg_ids, owners, max_length, order):
    """A conversation longer than max_length whose start holds a target -> [its start, its tail]:
        - the start: its first max_length tokens, trained on the answers that end within them;
        - the tail: the whole conversation with its older tool results shortened, oldest first, until it fits
          (observations.fit_context: the agent loop's own shortening, in the stage data's observation order),
          trained on the answers the start cut (so every answer is trained once).
    Why: the agent loop shortens old results when a prompt outgrows its context budget (the stage's max_length), so
    the later calls of a long trajectory run on a shortened history; cut at max_length instead, the stage never
    trains them. The tail is shortened as much as its last answer needs, so its earlier answers see a little less
    history than the loop would show them. [start] alone when even a stub in place of every result does not fit.
    segments, seg_ids, owners: the conversation's (text, carries_loss), their token ids and their messages."""
    from toolgen.observations import fit_context
    ends = dict(zip(owners, itertools.accumulate(map(len, seg_ids))))   # message index -> where its last segment ends
    start_ids, start_labels = [], []
    for i, (_, loss), seg in zip(owners, segments, seg_ids):
        start_ids += seg
        start_labels += seg if loss and ends[i] <= max_length else [IGNORE] * len(seg)
    start = {"input_ids": start_ids[:max_length], "labels": start_labels[:max_length]}
    rest = [dict(m, loss=bool(m.get("loss")) and ends[i] > max_length) for i, m in enumerate(messages)]
    if not any(m["loss"] for m in rest):   # what max_length cut holds no answer
        return [start]
    view = fit_context(rest, lambda v: len(_joined_messages(tokenizer, v)[0]) <= max_length, order)
    if view is None:
        return [start]
    input_ids, labels = _joined_messages(tokenizer, view)
    return [start, {"input_ids": input_ids, "labels": labels}]


def _joined_messages(tokenizer, messages):
    segments = _segments(tokenizer, messages)
    return _joined(segments, _encode(tokenizer, segments))


def prompt_ids(tokenizer, messages):
    """Token ids of a prompt that ends with the assistant header, tokenized exactly as in training."""
    ids = []
    for text, _ in _segments(tokenizer, messages):
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + generation_header(tokenizer, messages)


def generation_header(tokenizer, messages):
    """The ids of what add_generation_prompt adds after the conversation (the assistant header)."""
    header = _render(tokenizer, messages, add_generation_prompt=True)[len(_render(tokenizer, messages)):]
    return tokenizer(header, add_special_tokens=False)["input_ids"]


class LeftPadCollator:
    """Pads on the left, so that in a batch of short prompts the targets (the tool token and the end-of-turn marker)
    sit at the same few last positions: the loss needs the LM head at those positions only.
    position_ids count real tokens only, so a padded example is computed exactly as it would be alone.

    document_mask (training): no attention_mask; transformers then reads the restarts of position_ids (every padding
    position is 0, the example starts again at 0) as documents, so each padding position attends to itself and the
    example's tokens to the example only — the same numbers for the real tokens. With a padding mask instead, a padding
    position sees no key at all (a fully masked row): CUDA SDPA kernels may return NaN there, and although no loss
    depends on it, NaN x 0 in the backward turns the weight gradients into NaN (seen on an H100: a NaN gradient norm
    with a finite loss, on some batches only). Flash-attention kernels need the padding mask (they drop the padding),
    and generation needs it for the cache: both keep the default."""

    def __init__(self, pad_token_id, pad_to_multiple_of=None, document_mask=False):
        self.pad_token_id, self.multiple, self.document_mask = pad_token_id, pad_to_multiple_of, document_mask

    def __call__(self, examples):
        longest = max(len(e["input_ids"]) for e in examples)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        batch = {k: torch.full((len(examples), longest), v, dtype=torch.long)
                 for k, v in (("input_ids", self.pad_token_id), ("labels", IGNORE), ("attention_mask", 0))}
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            batch["input_ids"][row, longest - n:] = torch.tensor(e["input_ids"])
            batch["labels"][row, longest - n:] = torch.tensor(e["labels"])
            batch["attention_mask"][row, longest - n:] = 1
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if self.document_mask:
            batch["num_tokens"] = batch.pop("attention_mask").sum()
        return batch


class PackedCollator:
    """Concatenates the examples of a batch into one row: no padding at all. position_ids restart at 0 for each
    example, and there is no attention_mask: from the restarts transformers builds a mask in which no example attends
    to another (a document mask for sdpa/eager/flex_attention, varlen kernels for flash_attention_2). The row's length
    is rounded up to a multiple of `pad_to_multiple_of` (a padding tail that is its own example, without labels) so
    that compiled kernels see few distinct shapes.
    varlen (model.attn_implementation=varlen): the row also carries where each example starts (toolgen/attention.py),
    the padding tail counted as one more example."""

    def __init__(self, pad_token_id, pad_to_multiple_of=None, varlen=False):
        self.pad_token_id, self.multiple, self.varlen = pad_token_id, pad_to_multiple_of, varlen

    def __call__(self, examples):
        ids, labels, positions, lengths = [], [], [], []
        for e in examples:
            n = len(e["input_ids"])
            ids += e["input_ids"]
            labels += [IGNORE] + list(e["labels"][1:])   # the first token is never predicted from the one before it
            positions += range(n)
            lengths.append(n)
        real = len(ids)
        if self.multiple and real % self.multiple:
            tail = self.multiple - real % self.multiple
            ids, labels, positions = ids + [self.pad_token_id] * tail, labels + [IGNORE] * tail, positions + list(range(tail))
            lengths.append(tail)
        batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                 "position_ids": torch.tensor([positions]), "num_tokens": torch.tensor(real)}
        return {**batch, **attention.boundaries(lengths)} if self.varlen else batch


def num_tokens(batch):
    """Real (non-padding) tokens of a batch of either collator."""
    return batch["num_tokens"] if "num_tokens" in batch else batch["attention_mask"].sum()


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A shuffled order, sorted by length (longest first) within windows of `window` examples, so that a batch holds
    examples of similar length (less padding) while the order still changes every epoch. It depends only on
    (seed, epoch): every process and a resumed run see the same order (the loop calls set_epoch each epoch)."""

    def __init__(self, lengths, window, seed):
        self.lengths, self.window, self.seed, self.epoch = list(lengths), max(1, window), seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        grouped = []
        for start in range(0, len(order), self.window):
            grouped += sorted(order[start:start + self.window], key=lambda i: -self.lengths[i])
        return iter(grouped)


def stage_dataset(tokenizer, data_file, max_length, main_process_first=contextlib.nullcontext, long_examples="cut"):
    """A stage file -> (datasets.Dataset of {"input_ids", "labels"}, tokenized with loss masks and cached by datasets;
    what max_length cut: {"examples", "examples_cut", "target_tokens", "target_tokens_cut", "examples_fitted"}). A
    long example keeps its start (its end when the start holds no target), so the targets cut are mostly its last
    turns (an agent trajectory's later calls and Finish): the loop says so. long_examples="fit": a long example with
    tool results also gives a second row that trains those turns on a shortened history, as the agent loop shows it
    (fitted_tail; the observation order is the one the data folder was prepared in).
    benchmarks/trainer_baseline.py feeds the same examples to the HF Trainer."""
    from datasets import load_dataset
    from datasets.fingerprint import Hasher
    from toolgen.data.agent_sources import prepared_observation
    fit_order = prepared_observation(os.path.dirname(data_file))[1] if long_examples == "fit" else None
    dataset = load_dataset("json", data_files=data_file, split="train")
    fingerprint = Hasher.hash([dataset._fingerprint, CODE, tokenizer, max_length, fit_order])
    with main_process_first():   # one process tokenizes, the others read its cache
        dataset = dataset.map(lambda batch: _tokenized_with_cut(tokenizer, batch["messages"], max_length, fit_order),
                              batched=True, batch_size=256, remove_columns=dataset.column_names,
                              new_fingerprint=fingerprint, desc=f"tokenizing {data_file}")
    tails = sum(dataset["tail"])
    cut = {"examples": len(dataset) - tails, "examples_cut": sum(c > 0 for c in dataset["targets_cut"]),
           "target_tokens": sum(dataset["targets"]), "target_tokens_cut": sum(dataset["targets_cut"]),
           "examples_fitted": tails}
    return dataset.remove_columns(["targets", "targets_cut", "tail"]), cut


def stage_loader(tokenizer, data_file, stage_cfg, train_cfg, main_process_first=contextlib.nullcontext,
                 attn_implementation="sdpa", processes=1):
    """A stage file -> (DataLoader, what max_length cut: stage_dataset's): tokenized examples in length-grouped or
    shuffled order, left-padded (document mask, except for flash attention) or packed batches of
    `per_device_batch_size` examples; with several processes each update's examples re-dealt among them
    (toolgen/balance.py, train.balance_processes)."""
    from torch.utils.data import DataLoader, RandomSampler
    dataset, cut = stage_dataset(tokenizer, data_file, stage_cfg.max_length, main_process_first,
                                 stage_cfg.long_examples)
    batch = stage_cfg.per_device_batch_size
    balance = processes > 1 and train_cfg.balance_processes
    lengths = [len(ids) for ids in dataset["input_ids"]] if train_cfg.group_by_length or balance else None
    sampler = LengthGroupedSampler(lengths, 64 * batch, train_cfg.seed) if train_cfg.group_by_length else None
    collate = (PackedCollator(tokenizer.pad_token_id, train_cfg.pack_to_multiple_of,
                              varlen=attn_implementation == attention.NAME) if train_cfg.packing
               else LeftPadCollator(tokenizer.pad_token_id, document_mask="flash" not in attn_implementation))
    # workers: the loop's next batches are collated while the GPU runs (kept across epochs); pinned on a GPU host so
    # that accelerate's copy to the device does not wait (DataLoaderConfiguration(non_blocking=...))
    workers = {"num_workers": train_cfg.num_workers, "persistent_workers": train_cfg.num_workers > 0,
               "pin_memory": train_cfg.num_workers > 0 and torch.cuda.is_available()}
    if balance:   # the same batches as below (a RandomSampler: accelerate seeds it as it would DataLoader's own)
        from toolgen.balance import BalancedBatchSampler
        batches = BalancedBatchSampler(sampler or RandomSampler(dataset), batch, lengths, processes,
                                       stage_cfg.gradient_accumulation_steps, train_cfg.packing)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, **workers), cut
    return DataLoader(dataset, batch_size=batch, shuffle=sampler is None, sampler=sampler, collate_fn=collate,
                      **workers), cut
