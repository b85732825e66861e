"""LLM-written retrieval queries (the `llm` view): an instruct model writes N requests per API from the API's
documentation only (never from a query, so never from a test query).

    python -m toolgen.query_writer --catalog catalog.jsonl --model MODEL --out query_writer.jsonl

writes only the cache (run it on a GPU box: on 2 CPU cores a 0.5B model writes ~4 tokens/s); toolgen-prepare takes
it with --query-writer-cache FILE, or writes it itself with --query-writer MODEL. The cache has one JSON line per API:
{"api": [category, tool, api], "model", "prompt_hash", "generation", "answer" (the raw answer), "queries" (the kept
ones)}. An API whose (api, model, prompt_hash, generation) is in the cache is not asked again, so a rerun with the
same cache is identical and needs no model. The kept queries are filtered again from the raw answer on every read:
the filter's rules live here only.

This module sits above toolgen.models and toolgen.data (it loads a model); torch and transformers are imported only
when a model is loaded, so toolgen-prepare without the `llm` view does not pay for them.
"""

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import re
import sys

from toolgen.data import SAMPLE_DIR, stages
from toolgen.data.toolbench import Catalog, DataError, read_api_jsonl, read_jsonl, read_tools_dir

CACHE_FILE = "query_writer.jsonl"
SYSTEM = "You write the messages that real users type to a chat assistant that can call web APIs for them."
# "requests" alone made SmolLM2-135M write HTTP calls and URLs: the instruction says plain sentences, not code.
INSTRUCTION = ("Here is the documentation of an API:\n\n{doc}\n\nWrite {n} different requests that a real user would "
               "type to get this done, each on its own line, as plain sentences a person types into a chat (not code, "
               "URLs or HTTP calls). Do not name the tool or the API. Write only the requests.")


@dataclasses.dataclass
class WriterOptions:
    model: str | None = None      # None: every answer must come from the cache
    queries_per_api: int = 3
    temperature: float = 0.0      # 0: greedy; > 0: sampling seeded by `seed`
    seed: int = 0
    max_new_tokens: int = 192
    batch_size: int = 16

    def generation(self):
        """What, beside the model and the prompt, decides the answer: part of the cache key."""
        g = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        return {**g, "seed": self.seed, "top_p": 0.95} if self.temperature > 0 else g


def writer_prompt(api, n):
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": INSTRUCTION.format(doc=stages.api_documentation(api), n=n)}]


def prompt_hash(messages):
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


# ---- parsing and filtering an answer --------------------------------------------------------------------------------

# Lines that are code, a URL or an HTTP call, and the writer's comments on its own answer: not a user's request.
_CODE = re.compile(r"://|^(?:GET|POST|PUT|DELETE|PATCH)\b|^(?:def|return|import|curl)\b|[{}]|^/\w|```")
_COMMENT = re.compile(r"^(?:here(?:'s| is| are)|these (?:are|requests)|this is (?:a|the)\b|this request|note\b|"
                      r"sure\b)", re.I)
_BULLET = re.compile(r"^\s*(?:(?:\(?\d{1,2}[.):]|[-*\u2022\u2023\u2013]|#+|request\s*\d*\s*:)\s*)+", re.I)   # "# 1. ..."


def parse_answer(text):
    """The request lines of an answer: numbering and bullets ('1.', '2)', '-', '*', '•') and quotes stripped."""
    lines = []
    for line in (text or "").splitlines():
        line = _BULLET.sub("", line.strip()).replace("**", "").strip()
        if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'\u201c":
            line = line[1:-1].strip()
        line = line.strip("\u201c\u201d").strip()
        if line:
            lines.append(line)
    return lines


def _words(text):
    return re.findall(r"\w+", text.lower())


def longest_common_run(a, b):
    """The longest run of words of `a` found contiguous in `b` (word lists): the copy test."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def drop_reason(query, api, seen=()):
    """Why a parsed line is not kept, or None. Copied: equal to the API or tool description, or at least 80% of its
    words in one contiguous span of the documentation text (stages.api_documentation)."""
    words = _words(query)
    if query.endswith(":") or _COMMENT.match(query):
        return "preamble"          # "Here are 3 requests:", "These are all the same request, ..."
    if _CODE.search(query):
        return "code_or_url"
    names = {tuple(_words(n)) for n in (api.api, api.tool, f"{api.tool} {api.api}", f"{api.api} {api.tool}")}
    if words and tuple(words) in names:
        return "only_api_name"
    if len(words) < 3:
        return "too_short"
    if len(words) > 60:
        return "too_long"
    descriptions = {tuple(_words(d)) for d in (api.api_description, api.tool_description) if d}
    if tuple(words) in descriptions or \
            longest_common_run(words, _words(stages.api_documentation(api))) >= 0.8 * len(words):
        return "copies_documentation"
    if " ".join(words) in seen:
        return "duplicate"
    return None


def filter_answer(api, answer, n):
    """(kept queries, Counter of drop reasons). An answer with no line counts once as empty_answer; lines past the
    first n kept ones count as beyond_n."""
    lines = parse_answer(answer)
    if not lines:
        return [], collections.Counter(empty_answer=1)
    kept, seen, drops = [], set(), collections.Counter()
    for line in lines:
        reason = drop_reason(line, api, seen) or ("beyond_n" if len(kept) == n else None)
        if reason:
            drops[reason] += 1
        else:
            kept.append(line)
            seen.add(" ".join(_words(line)))
    return kept, drops


# ---- the cache ------------------------------------------------------------------------------------------------------

def cache_record(api, model, messages, generation, answer, n):
    return {"api": list(api.key), "model": model, "prompt_hash": prompt_hash(messages), "generation": generation,
            "answer": answer, "queries": filter_answer(api, answer, n)[0]}


def read_cache(path):
    """The records of a cache file; a line that is not a record is an error naming the file and line."""
    records = []
    for n, r in read_jsonl(path):
        if not (isinstance(r, dict) and isinstance(r.get("api"), list) and len(r["api"]) == 3
                and all(isinstance(part, str) for part in r["api"])
                and all(isinstance(r.get(k), str) for k in ("model", "prompt_hash", "answer"))):
            raise DataError(f"{path} line {n}: not a query-writer record (needs api [category, tool, api], model, "
                            "prompt_hash, answer)")
        records.append(r)
    return records


def _lookup(index, api, messages, options):
    """The cached record for this API and prompt: with a model given, only one of that model and generation."""
    for r in index.get((api.key, prompt_hash(messages)), []):
        if options.model is None or (r["model"] == options.model and r.get("generation") == options.generation()):
            return r
    return None


# ---- the model ------------------------------------------------------------------------------------------------------

def check_model(name):
    """An error naming the model before any work when it cannot load (its config and tokenizer, not its weights)."""
    from transformers import AutoConfig

    from toolgen import models, quiet  # noqa: F401  (quiet: no progress bar for every load)
    try:
        path = models.resolve_model(name)
        AutoConfig.from_pretrained(path)
        models.load_tokenizer(path)
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        raise DataError(f"--query-writer {name}: cannot load the model ({type(e).__name__}: {e})") from None


def load_writer(name):
    """(tokenizer, model) on the GPU when there is one; left padding for batched generation."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolgen import models, quiet  # noqa: F401
    path = models.resolve_model(name)
    tokenizer = models.load_tokenizer(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=models.torch_dtype("auto"))
    return tokenizer, model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def generate_answers(tokenizer, model, prompts, options, offset=0):
    """One decoded answer per chat prompt, in one batch. Sampling is seeded by (seed, position in the catalog)."""
    import torch
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    kwargs = {"max_new_tokens": options.max_new_tokens, "pad_token_id": tokenizer.pad_token_id, "do_sample": False}
    if options.temperature > 0:
        torch.manual_seed(options.seed * 1_000_003 + offset)
        kwargs.update(do_sample=True, temperature=options.temperature, top_p=0.95)
    with torch.no_grad():
        out = model.generate(**batch, **kwargs)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


class MissingAnswers(DataError):
    """APIs without a cached answer and no model to write them. An answer counts only for the documentation and the
    number of queries per API it was written for (both are in its prompt's hash)."""

    def __init__(self, missing, total, per_api, first):
        self.missing, self.total, self.per_api, self.first = missing, total, per_api, first
        super().__init__(f"{missing} of {total} APIs have no cached query-writer answer for {per_api} queries per API "
                         f"(first: {first}); give --query-writer MODEL to write them")


def write_queries(apis, options, cache=(), on_batch=None):
    """(one record per API, in order; {"from_cache", "generated"}). Cached answers are reused; the model is loaded
    only when some API has none. on_batch(records) is called after every generated batch."""
    index = {}
    for r in cache:
        index.setdefault((tuple(r["api"]), r["prompt_hash"]), []).append(r)
    n = options.queries_per_api
    records, todo = [], []
    for api in apis:
        messages = writer_prompt(api, n)
        records.append(_lookup(index, api, messages, options))
        if records[-1] is None:
            todo.append((len(records) - 1, api, messages))
    if todo and options.model is None:
        raise MissingAnswers(len(todo), len(apis), options.queries_per_api, "/".join(todo[0][1].key))
    if todo:
        tokenizer, model = load_writer(options.model)
        for start in range(0, len(todo), options.batch_size):
            chunk = todo[start:start + options.batch_size]
            answers = generate_answers(tokenizer, model, [m for _, _, m in chunk], options, chunk[0][0])
            for (i, api, messages), answer in zip(chunk, answers):
                records[i] = cache_record(api, options.model, messages, options.generation(), answer, n)
            if on_batch:
                on_batch([records[i] for i, _, _ in chunk])
    return records, {"from_cache": len(apis) - len(todo), "generated": len(todo)}


def llm_view(apis, options, cache=()):
    """What prepare needs: ({api key: kept queries}, the cache records to write, the report section)."""
    records, stats = write_queries(apis, options, cache)
    queries, dropped = {}, collections.Counter()
    for api, r in zip(apis, records):
        queries[api.key], drops = filter_answer(api, r["answer"], options.queries_per_api)
        dropped.update(drops)
    report = {"models": sorted({r["model"] for r in records}), "apis": len(apis), **stats,
              "queries_per_api": options.queries_per_api, "queries_kept": sum(map(len, queries.values())),
              "dropped": dict(sorted(dropped.items()))}
    return queries, records, report


# ---- command: only the cache ----------------------------------------------------------------------------------------

def read_catalog(path):
    """A JSON Lines catalog (the --api-catalog format) or a tool folder (<Category>/<tool>.json): APIs in key order."""
    catalog = Catalog(read_tools_dir(path) if os.path.isdir(path) else read_api_jsonl(path))
    return [catalog.apis[k] for k in sorted(catalog.apis)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", default=os.path.join(SAMPLE_DIR, "catalog.jsonl"),
                   help="API catalog (JSON Lines) or tool folder; default: the shipped sample")
    p.add_argument("--model", required=True, help="hub id, folder, gguf:..., gguf-file:PATH or tiny (models.py)")
    p.add_argument("--out", required=True, help="the cache file (JSON Lines); records already in it are kept and "
                                                "not written again, so a stopped run continues")
    p.add_argument("--queries-per-api", type=int, default=WriterOptions.queries_per_api)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: seeded sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=WriterOptions.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=WriterOptions.batch_size)
    args = p.parse_args(argv)
    options = WriterOptions(args.model, args.queries_per_api, args.temperature, args.seed, args.max_new_tokens,
                            args.batch_size)
    try:
        check_model(args.model)
        apis = read_catalog(args.catalog)
        cache = read_cache(args.out) if os.path.exists(args.out) else []
        with open(args.out, "a", encoding="utf-8") as f:
            def append(records):   # after every batch: a stopped run keeps what it wrote
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                f.flush()
            records, stats = write_queries(apis, options, cache, on_batch=append)
    except (DataError, OSError) as e:
        sys.exit(f"toolgen.query_writer: error: {e}")
    kept = sum(len(filter_answer(a, r["answer"], options.queries_per_api)[0]) for a, r in zip(apis, records))
    print(f"wrote {args.out}: {len(apis)} APIs ({stats['from_cache']} already there, {stats['generated']} written), "
          f"{kept} queries kept")


if __name__ == "__main__":
    main()
