"""Tool tokens: names in ToolGen's atomic style, adding them to a tokenizer, initialising their embedding rows."""

import json
import re
import unicodedata

FINISH = "<<Finish>>"


def _ascii(text):
    """ASCII-safe text for a token name: accents folded, token delimiters and control characters removed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = text.replace("<<", "").replace(">>", "").replace("&&", "&")
    return re.sub(r"\s+", " ", re.sub(r"[\x00-\x1f]", " ", text)).strip()


def tool_token_names(keys, reserved=None):
    """Map each (category, tool, api) to a unique '<<tool&&api>>'.

    Collisions (one tool name in several categories, or names equal once made ASCII) are resolved deterministically:
    keys are visited in sorted order, the first keeps the plain name, later ones get '@<category>' and then '#<n>'.
    reserved: {token: key} already taken (a trained model's tools, when tools are added to it): never given again.
    Returns (names: {key: token}, collisions: [{key, token, clashed_with}]).
    """
    names, taken, collisions = {}, dict(reserved or {}), []
    for key in sorted(keys):
        category, tool, api = key
        base_tool, base_api = _ascii(tool) or "tool", _ascii(api) or "api"
        candidates = [f"<<{base_tool}&&{base_api}>>", f"<<{base_tool}@{_ascii(category)}&&{base_api}>>"]
        token = next((c for c in candidates if c not in taken), None)
        n = 2
        while token is None:
            token = f"<<{base_tool}@{_ascii(category)}&&{base_api}#{n}>>"
            token = None if token in taken else token
            n += 1
        if token != candidates[0]:
            collisions.append({"key": list(key), "token": token, "clashed_with": list(taken[candidates[0]])})
        names[key] = token
        taken[token] = key
    return names, collisions


def token_words(token):
    """The plain words of a tool token, for initialising its embedding: '<<Sky Cast&&daily forecast>>' -> 'Sky Cast daily forecast'."""
    inner = token[2:-2] if token.startswith("<<") and token.endswith(">>") else token
    return re.sub(r"[@#&]+", " ", inner).strip() or inner


def is_tied(model):
    """Whether the LM head shares its weight with the input embedding."""
    out = model.get_output_embeddings()
    return out is None or out.weight is model.get_input_embeddings().weight


def add_tool_tokens(tokenizer, model, tokens, pad_to_multiple_of=64):
    """Add tokens to tokenizer and model; new rows start at the mean embedding of the token's words.

    The vocabulary is padded to a multiple of 64 (an odd size puts the LM head on a much slower GEMM); the padding rows
    exist only in the weight matrices, and callers cut logits to len(tokenizer) so they are never predicted.
    Returns the ids of the tool tokens, in the order given.
    """
    import torch

    vocab = tokenizer.get_vocab()   # once: get_vocab() builds a dict of the whole vocabulary on every call
    new = [t for t in tokens if t not in vocab]
    tokenizer.add_tokens(new, special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    words = {t: tokenizer(token_words(t), add_special_tokens=False)["input_ids"] for t in new}
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    if not is_tied(model):
        tables.append(model.get_output_embeddings().weight)
    with torch.no_grad():
        for table in tables:
            for t in new:
                sub = [i for i in words[t] if i < table.shape[0]] or [tokenizer.unk_token_id or 0]
                table[tokenizer.convert_tokens_to_ids(t)] = table[sub].float().mean(0).to(table.dtype)
            table[len(tokenizer):] = 0   # padding rows: never trained, never predicted
    return ids


class TokenOrderError(ValueError):
    """A prepared folder whose tool tokens do not extend the parent stage's: old tokens would change their ids."""


def parent_token_count(parent_dir, data_dir):
    """add_tools: the data's tool tokens begin with the parent's, in the same order, so that no old token changes its
    id (toolgen-add-tools writes them so) -> how many tokens the parent has."""
    import os
    with open(os.path.join(parent_dir, "tool_tokens.json"), encoding="utf-8") as f:
        old = json.load(f)
    with open(os.path.join(data_dir, "tool_tokens.json"), encoding="utf-8") as f:
        new = json.load(f)["tokens"]
    if new[:len(old)] != old:
        raise TokenOrderError(f"{data_dir}/tool_tokens.json does not begin with the tokens of {parent_dir} in their "
                              f"order: prepared for another parent? (toolgen-add-tools --prepare-only --model {parent_dir})")
    return len(old)
