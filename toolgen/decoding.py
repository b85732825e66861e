"""Constrained tool decoding and retrieval ranking.

With one atomic token per tool, constrained decoding of a tool is a mask over the tool rows of the logits: only a
complete, real tool token can come out. Retrieval ranks tools by their log-probability at the answer position; for
atomic tokens that is exactly the order in which beam search with num_beams=k and one new token returns them
(`beam_search_tools`, used by the tests to check the two agree).
"""

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from toolgen.collate import LeftPadCollator, prompt_ids


def _ids(tokenizer, prompt):
    """A prompt is a conversation (a list of messages) or its token ids (collate.prompt_ids; the agent's policy
    tokenizes with a cache, toolgen/prompt_cache.py)."""
    return prompt_ids(tokenizer, prompt) if not prompt or isinstance(prompt[0], dict) else list(prompt)


class JsonScan:
    """Whether text fed piece by piece is, once stripped, one complete JSON object: its first "{" closed again,
    strings and escapes respected. Text that does not start with "{" (a thought, a plain answer) is never done."""

    def __init__(self):
        self.started = self.never = self.done = self.in_string = self.escaped = False
        self.depth = 0

    def feed(self, text):
        for ch in text:
            if self.done or self.never:
                return
            if not self.started:
                if ch.isspace():
                    continue
                self.started, self.never = True, ch != "{"
                if self.never:
                    return
            if self.in_string:
                self.escaped, self.in_string = (False, True) if self.escaped else (ch == "\\", ch != '"')
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                self.done = self.depth == 0


def json_object_done(text):
    scan = JsonScan()
    scan.feed(text)
    return scan.done


class JsonObjectDone(StoppingCriteria):
    """Stops each row of a generation once its new text is a complete JSON object (the agent's arguments turn): a
    model that does not end its turn right after the object would otherwise run on to the token budget (512 for
    arguments). Other turns (thoughts) never match, so the same criterion serves every greedy generation.
    Each call decodes only the tokens added since the last one and feeds them to the row's JsonScan: decoding every
    row whole at every step cost 2.07 s of CPU per 512-token generation of 64 rows (benchmarks/json_stop.py; 0.057 s
    now). A token cut inside a multi-byte character decodes to a replacement character, never to a quote, brace or
    backslash, so the scan sees the same structure (tested against the whole text at every step)."""

    def __init__(self, tokenizer, prompt_length, answered=None):
        # answered: each row's answer so far (text), when this generation continues it (generate_rows)
        self.tokenizer, self.fed, self.answered, self.scans = tokenizer, prompt_length, answered or [], None

    def __call__(self, input_ids, scores, **kwargs):
        if self.scans is None:
            self.scans = [JsonScan() for _ in range(input_ids.shape[0])]
            for scan, text in zip(self.scans, self.answered):
                scan.feed(text)
        texts = self.tokenizer.batch_decode(input_ids[:, self.fed:], skip_special_tokens=True)
        self.fed = input_ids.shape[1]
        for scan, text in zip(self.scans, texts):
            scan.feed(text)
        return torch.tensor([scan.done for scan in self.scans], dtype=torch.bool, device=input_ids.device)


class RepeatingRow(StoppingCriteria):
    """Stops each row whose last `window` new tokens are one block of at most `period` tokens over and over: a small
    model in greedy decoding can loop inside a string (a long search key, a list) until the token budget, and in a
    batched generation that one row holds every other row of the batch for up to 512 steps. Such a row is cut
    anyway (invalid JSON, one repair turn); stopping it early changes no valid answer that is not itself a loop of
    `window` tokens."""

    def __init__(self, prompt_length, window=64, period=16, answered=None):
        # answered: each row's answer tokens before this generation (generate_rows continues answers)
        self.prompt_length, self.window, self.period, self.answered = prompt_length, window, period, answered
        self.fired = None

    def __call__(self, input_ids, scores, **kwargs):
        n, width = input_ids.shape
        lengths = torch.full((n,), width - self.prompt_length, device=input_ids.device)   # each row's answer so far
        if self.answered:
            lengths += torch.tensor(self.answered, device=input_ids.device)
        done = torch.zeros(n, dtype=torch.bool, device=input_ids.device)
        tail = input_ids[:, -self.window:]
        # tail[i] == row[i - p] for a period p that fits in the row's answer (none below window + 1 answer tokens)
        for p in range(1, min(self.period, width - self.window) + 1):
            fits = lengths >= self.window + p
            if not fits.any():
                break
            done |= fits & (tail == input_ids[:, -self.window - p:width - p]).all(-1)
        self.fired = done if self.fired is None else self.fired | done
        return done


@torch.no_grad()
def next_token_logprobs(model, tokenizer, prompts, batch_size=32):
    """Log-probabilities over the real vocabulary (padding rows cut) of the token after each prompt: [N, vocab]."""
    collate = LeftPadCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    vocab = len(tokenizer)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = [_ids(tokenizer, m) for m in prompts[start:start + batch_size]]
        batch = collate([{"input_ids": ids, "labels": ids} for ids in chunk])
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       position_ids=batch["position_ids"].to(device), logits_to_keep=1, use_cache=False).logits
        out.append(torch.log_softmax(logits[:, -1, :vocab].float(), -1).cpu())
    return torch.cat(out) if out else torch.empty(0, vocab)


def rank_tools(logprobs, allowed_ids, k=None):
    """Top-k allowed ids per row, best first (ties broken by position in allowed_ids). -> list of id lists."""
    allowed = torch.tensor(allowed_ids)
    scores = logprobs[:, allowed]
    k = min(k or len(allowed_ids), len(allowed_ids))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]   # ties: allowed_ids order
    return allowed[order].tolist()


@torch.no_grad()
def beam_search_tools(model, tokenizer, messages, allowed_ids, k):
    """Beam search (num_beams=k, one new token) restricted to allowed_ids: the reference the ranking must match."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, messages)], device=device)
    allowed = list(allowed_ids)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=k, num_return_sequences=k,
                         max_new_tokens=1, do_sample=False, prefix_allowed_tokens_fn=lambda b, s: allowed,
                         pad_token_id=tokenizer.pad_token_id, output_scores=False)
    return out[:, -1].tolist()


def stop_rows(tokenizer, prompt_length, answered=None):
    """The agent's greedy generations stop a row at its complete JSON object or once it loops -> [json stop, loop
    stop]. answered: each row's answer ids from before this generation (generate_rows), judged with the new ones."""
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answered] if answered else None
    return StoppingCriteriaList([JsonObjectDone(tokenizer, prompt_length, texts),
                                 RepeatingRow(prompt_length, answered=[len(a) for a in answered] if answered else None)])


@torch.no_grad()
def generate_text(model, tokenizer, messages, max_new_tokens=96):
    """Greedy continuation of a conversation or its ids (the agent's argument turn), decoded without special tokens."""
    device = next(model.parameters()).device
    ids = torch.tensor([_ids(tokenizer, messages)], device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         stopping_criteria=stop_rows(tokenizer, ids.shape[1]))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


@torch.no_grad()
def generate_rows(model, tokenizer, prompts, max_new_tokens, answered=None):
    """Greedy continuations of several conversations (or their ids) at once, left-padded; each row stops at its end
    of turn, its complete JSON object or a loop (the rest of its row is padding) -> [(new token ids, done)], done:
    the row stopped before max_new_tokens ran out. answered: for each prompt, the ids of an answer it already began
    (toolgen/batching.py asks for long answers in segments): appended to the prompt, and judged whole by the stops."""
    device = next(model.parameters()).device
    answered = answered or [[] for _ in prompts]
    batch = LeftPadCollator(tokenizer.pad_token_id)([{"input_ids": ids, "labels": ids} for ids in (
        _ids(tokenizer, m) + list(a) for m, a in zip(prompts, answered))])
    width = batch["input_ids"].shape[1]
    stops = stop_rows(tokenizer, width, answered)
    json_stop, loop_stop = stops
    out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         stopping_criteria=stops)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    rows = out[:, width:].tolist()
    fired = loop_stop.fired.tolist() if loop_stop.fired is not None else [False] * len(rows)
    return [(row, bool(eos & set(row)) or (json_stop.scans is not None and json_stop.scans[i].done) or fired[i])
            for i, row in enumerate(rows)]


def generate_texts(model, tokenizer, prompts, max_new_tokens):
    """generate_text for several conversations (or their ids) at once -> one text per prompt."""
    return [tokenizer.decode(ids, skip_special_tokens=True).strip()
            for ids, _ in generate_rows(model, tokenizer, prompts, max_new_tokens)]
