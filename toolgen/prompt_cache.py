"""The agent's prompts, tokenized once per message instead of whole at every turn.

A loop's conversation grows by appending: each turn the loop counts its prompt's tokens (the context budget) and then
asks the model on the same prompt. `collate.prompt_ids` renders the chat template once per message prefix and
tokenizes every message again: 9.4 ms for a 3,600-token ComplexFuncBench conversation of 32 messages with Qwen's
tokenizer on one CPU core (half rendering, half tokenizing). With 188 requests at once the turns of all of them pass
through that serially, twice per model call. Here a message's segment ids are kept under (the prefix before it, its
role, its content), so a turn renders and tokenizes only what it added (and a shortened observation, with what
follows it). The ids are prompt_ids' by construction (the same `collate.segment`); tests check them equal.
"""

import itertools
import threading

from toolgen.collate import _render, generation_header, segment


class PromptCache:
    def __init__(self, tokenizer, max_messages=500_000):
        self.tokenizer, self.max_messages = tokenizer, max_messages
        self.nodes = {}   # (prefix node, role, content) -> (node, ids of the message's segment)
        self._next = itertools.count(1)
        self._lock = threading.Lock()   # several loops' threads ask at once

    def ids(self, messages):
        """collate.prompt_ids(tokenizer, messages), from the ids of the messages seen before."""
        with self._lock:
            if len(self.nodes) > self.max_messages:   # a long-lived agent: start again rather than grow
                self.nodes.clear()
        node, out, done = 0, [], None
        for i, m in enumerate(messages):
            key = (node, m["role"], m["content"])
            hit = self.nodes.get(key)
            if hit is None:
                if done is None:   # the rendering of the prefix, once per call that meets a new message
                    done = _render(self.tokenizer, messages[:i])
                parts, done = segment(self.tokenizer, messages, i, done)
                ids = [t for text, _ in parts for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
                hit = (next(self._next), tuple(ids))
                with self._lock:   # a thread that lost a race takes the winner's node, so later messages find it
                    hit = self.nodes.setdefault(key, hit)
            else:
                done = None
            node = hit[0]
            out += hit[1]
        return out + generation_header(self.tokenizer, messages)
