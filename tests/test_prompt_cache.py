"""The agent's prompt cache (toolgen/prompt_cache.py) gives collate.prompt_ids' ids, tokenizing only new messages."""

from toolgen import models
from toolgen.collate import prompt_ids
from toolgen.prompt_cache import PromptCache


class Counting:
    """A tokenizer that counts the characters it is asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.encoded = tokenizer, 0

    def __call__(self, text, **kwargs):
        self.encoded += len(text)
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def conversation():
    turns = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Book a car in Oslo."}]
    for i in range(4):
        turns += [{"role": "user", "content": "Generate the action."},
                  {"role": "assistant", "content": f"<<cars&&Search_{i}>>"},
                  {"role": "user", "content": "Give the input."},
                  {"role": "assistant", "content": f'{{"query": "Oslo {i}"}}'},
                  {"role": "tool", "content": '{"items": [' + ", ".join(str(j) for j in range(40 * i)) + "]}"}]
    return turns


def test_cached_ids_equal_prompt_ids_as_a_conversation_grows_and_is_shortened():
    tokenizer = models.load_tokenizer(models.resolve_model("tiny"))
    cache, turns = PromptCache(tokenizer), conversation()
    for n in range(1, len(turns) + 1):
        assert cache.ids(turns[:n]) == prompt_ids(tokenizer, turns[:n])
    short = list(turns)   # fit_context shortens an old observation: the messages after it are re-tokenized
    short[6] = {"role": "tool", "content": '{"removed": "to fit the context"}'}
    assert cache.ids(short) == prompt_ids(tokenizer, short)
    assert cache.ids(turns) == prompt_ids(tokenizer, turns)


def test_a_turn_tokenizes_only_what_it_added():
    tokenizer = Counting(models.load_tokenizer(models.resolve_model("tiny")))
    cache, turns = PromptCache(tokenizer), conversation()
    cache.ids(turns[:-1])
    tokenizer.encoded = 0
    cache.ids(turns)   # one new message: its segment and the generation header, nothing before it
    assert 0 < tokenizer.encoded < len(turns[-1]["content"]) + 100
    tokenizer.encoded = 0
    cache.ids(turns)   # the same prompt again (the loop counts its tokens, then asks on it): the header only
    assert tokenizer.encoded < 100
