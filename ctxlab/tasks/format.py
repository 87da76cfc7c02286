"""The lab-wide prompt and answer format, shared by every task and every strategy.

A prompt is the context, the question and one answer instruction; the model answers after the final-answer marker
("Final:"), optionally after a thinking block (`<think> ... </think>` in chat templates that support it, or a
free scratchpad). The answer text of a generation is what follows the last "</think>" and then the last "Final:"
(the whole text when neither occurs), so a task's parser sees comparable text from every strategy and backend.
"""

from __future__ import annotations

FINAL_MARKER = "Final:"
THINK_CLOSE = "</think>"

_ANSWER_DIRECT = f'Reply with only the answer after "{FINAL_MARKER}".'
_ANSWER_THINK = f'Think step by step, then give the answer after "{FINAL_MARKER}".'


def format_prompt(context: str, question: str, thinking: bool = False) -> str:
    """The model input: context, the question and the answer instruction (thinking or direct)."""
    return f"{context}\n\n{question}\n{_ANSWER_THINK if thinking else _ANSWER_DIRECT}\n"


def answer_region(text: str) -> tuple[str, bool]:
    """The text after the last `Final:` marker (case-insensitive) and whether a marker was found."""
    idx = text.lower().rfind(FINAL_MARKER.lower())
    if idx < 0:
        return text, False
    return text[idx + len(FINAL_MARKER) :], True


def answer_text(generation: str) -> str:
    """The answer in a generation: after the thinking block (if any) and after the last "Final:" (if any)."""
    if THINK_CLOSE in generation:
        generation = generation.rsplit(THINK_CLOSE, 1)[1]
    return answer_region(generation)[0].strip()
