"""Many agent loops on one model at once: each request runs its own loop in a thread, and their model calls are
gathered and run as one batch.

The loop (toolgen/agent.py) stays one readable request at a time; only the policy changes. A small model generating one
request at a time leaves a GPU idle (the end-to-end evaluation took ~5 s a request on an H200: kernel launches, not
arithmetic), so N requests batched should cost little more than one; not yet timed on a GPU. `BatchingPolicy` has
ModelPolicy's interface; a worker thread owns the model and runs what the loops asked for once every live loop is
waiting on it (or after a short wait, so a loop busy in a tool call never stalls the others).
"""

import threading
import time

from toolgen import decoding


class BatchingPolicy:
    # Answers are asked for in segments of at most SEGMENT tokens. A batch's generation lasts as long as its longest
    # row, and one long answer (a Finish text, a looping string) held every loop of the round for up to the 512-token
    # budget: in the 2 x H100 run a round of 188 ComplexFuncBench loops took about a minute, most answers being under
    # 70 tokens (benchmarks/results/quality.md). A row not done after a segment asks again, its answer so far appended
    # to its prompt, beside whatever the other loops ask next; greedy decoding continues it with the same tokens.
    SEGMENT = 128

    def __init__(self, policy, wait_s=0.5):
        self.policy, self.wait_s = policy, wait_s
        self.cond = threading.Condition()
        self.pending, self.live, self.closed = [], 0, False
        self.worker = threading.Thread(target=self._serve, daemon=True)
        self.worker.start()

    # ---- the ModelPolicy interface, called from the loops' threads ----
    def check_tokens(self, tokens):
        self.policy.check_tokens(tokens)

    def count_tokens(self, messages):
        return self.policy.count_tokens(messages)

    def action_logprobs(self, messages, tokens):
        return self.policy.pick(self._ask(("logprobs", None), self.policy.prompt(messages)), tokens)

    def generate(self, messages, max_new_tokens):
        # tokenized here, in the loop's thread: the tokenizer's encoding runs outside the GIL, beside other loops'
        prompt, answer, size = self.policy.prompt(messages), [], min(self.SEGMENT, max_new_tokens)
        while True:   # a segment may run past the budget: cut to it, as one generation of max_new_tokens would be
            ids, done = self._ask(("generate", size), prompt, answer)
            answer = (answer + ids)[:max_new_tokens]
            if done or len(answer) >= max_new_tokens:
                return self.policy.tokenizer.decode(answer, skip_special_tokens=True).strip()

    def prompt(self, messages):
        return self.policy.prompt(messages)

    # ---- the loops register while they run ----
    def enter(self):
        with self.cond:
            self.live += 1

    def leave(self):
        with self.cond:
            self.live -= 1
            self.cond.notify_all()

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.worker.join()

    def _ask(self, kind, ids, answered=()):
        slot = {"kind": kind, "ids": ids, "answered": list(answered), "done": threading.Event()}
        with self.cond:   # only the worker waits on the condition: each loop waits on its own slot
            self.pending.append(slot)
            self.cond.notify_all()
        slot["done"].wait()
        if "error" in slot:
            raise slot["error"]
        return slot["result"]

    def _serve(self):
        while True:
            with self.cond:
                while not self.pending and not self.closed:
                    self.cond.wait()
                if self.closed and not self.pending:
                    return
                self._gather()
                batch, self.pending = self.pending, []
            self._run(batch)
            for slot in batch:
                slot["done"].set()

    def _gather(self):
        """Wait (holding the condition) until every live loop has asked, or until none has arrived for wait_s. The
        loops reach us one after the other, each after its own CPU work (the replayed call, the prompt's chat
        template and tokens, under the GIL): a few ms each, but hundreds of them add up to seconds. Running when a
        fixed moment had passed (it did) split them into batches that each paid a whole generation and then stayed
        out of step: in a 2 x H100 run of 188 requests at once, 6 action steps took 7 minutes. Each arrival restarts
        the wait, so a loop that stops arriving (busy in a slow tool call) holds the others until wait_s passes
        without an arrival."""
        last, seen = time.monotonic(), len(self.pending)
        while len(self.pending) < self.live and not self.closed:
            if len(self.pending) != seen:
                last, seen = time.monotonic(), len(self.pending)
            left = self.wait_s - (time.monotonic() - last)
            if left <= 0:
                return
            self.cond.wait(timeout=left)

    def _run(self, batch):
        """One forward / one generate per kind of call (generations grouped by their token limit)."""
        model, tokenizer = self.policy.model, self.policy.tokenizer
        for kind in {s["kind"] for s in batch}:
            slots = [s for s in batch if s["kind"] == kind]
            try:
                if kind[0] == "logprobs":
                    rows = decoding.next_token_logprobs(model, tokenizer, [s["ids"] for s in slots])
                else:
                    rows = decoding.generate_rows(model, tokenizer, [s["ids"] for s in slots], kind[1],
                                                  [s["answered"] for s in slots])
                for slot, row in zip(slots, rows):
                    slot["result"] = row
            except Exception as e:   # noqa: BLE001  (handed to the loops that asked, raised there)
                for slot in slots:
                    slot["error"] = e


def run_batched(make_agent, jobs, policy, width, done=None, stop=None):
    """jobs: [(request text, uid, executor)] -> transcripts in the same order; at most `width` run at once, each
    Agent.run in its own thread (make_agent() gives each its own Agent: a run keeps its executor on the agent).
    done(): called as each job ends, started or not (a progress bar). stop(): True once no run may start or take another step (a
    time limit); a run that never started is None."""
    out, seats, lock = [None] * len(jobs), threading.Semaphore(width), threading.Lock()

    def one(i, job):
        try:
            if stop is None or not stop():   # past the time limit a run does not start (and counts as done)
                out[i] = make_agent().run(*job, stop=stop)
        finally:
            policy.leave()
            seats.release()
            if done is not None:
                with lock:
                    done()
    # A run is live from the moment its seat is taken, here, before its thread starts: the whole first wave is
    # registered before any of it asks, so its first batch is whole (a loop that asked alone would get a batch of one)
    first = min(width, len(jobs))
    for _ in range(first):
        seats.acquire()
        policy.enter()
    threads = []
    for i, job in enumerate(jobs):
        if i >= first:
            seats.acquire()
            policy.enter()
        threads.append(threading.Thread(target=one, args=(i, job), daemon=True))
        threads[-1].start()
    for t in threads:
        t.join()
    policy.close()
    return out
