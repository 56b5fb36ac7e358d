"""What llama-server's log says about each request it ran: how many prompt tokens it
processed (the rest came from its prompt cache), how fast, how many it wrote, and how
many tokens the slot held when it stopped (prompt and answer).

    for task in llama_tasks(server.log_path.read_text()):
        task.prompt_tokens, task.prompt_ms, task.output_tokens, task.context_tokens

The lines read (llama-server's `print_timing` and `release`):

    slot print_timing: id  0 | task 1 | prompt eval time =   10294.49 ms /   891 tokens (...)
    slot print_timing: id  0 | task 1 |        eval time =    1689.66 ms /    48 tokens (...)
    slot      release: id  0 | task 1 | stop processing: n_tokens = 938, truncated = 0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TIMING = re.compile(r"\| task (\d+) \|\s*(prompt eval|eval) time =\s*([\d.]+) ms /\s*(\d+) tokens")
_RELEASE = re.compile(r"\| task (\d+) \| stop processing: n_tokens = (\d+)")


@dataclass
class LlamaTask:
    task: int
    prompt_ms: float = 0.0
    prompt_tokens: int = 0  # processed; those reused from the prompt cache are not counted
    eval_ms: float = 0.0
    output_tokens: int = 0
    context_tokens: int | None = None  # in the slot when the task stopped: prompt and answer

    @property
    def prompt_size(self) -> int | None:
        """The whole prompt, cached part included (the slot's tokens less the answer)."""
        return None if self.context_tokens is None else self.context_tokens - self.output_tokens + 1

    @property
    def prompt_rate(self) -> float | None:
        return self.prompt_tokens / self.prompt_ms * 1000 if self.prompt_ms else None

    @property
    def output_rate(self) -> float | None:
        return self.output_tokens / self.eval_ms * 1000 if self.eval_ms else None


def llama_tasks(text: str) -> list[LlamaTask]:
    """The finished tasks in a llama-server log, in the order they finished, without
    those that had nothing to do (an empty prompt: neither processed nor wrote a token)."""
    tasks: dict[int, LlamaTask] = {}
    for line in text.splitlines():
        if m := _TIMING.search(line):
            task = tasks.setdefault(int(m[1]), LlamaTask(int(m[1])))
            if m[2] == "prompt eval":
                task.prompt_ms, task.prompt_tokens = float(m[3]), int(m[4])
            else:
                task.eval_ms, task.output_tokens = float(m[3]), int(m[4])
        elif m := _RELEASE.search(line):
            tasks.setdefault(int(m[1]), LlamaTask(int(m[1]))).context_tokens = int(m[2])
    return [t for t in tasks.values() if t.prompt_tokens or t.output_tokens]
