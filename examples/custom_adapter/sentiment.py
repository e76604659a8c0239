"""A custom adapter: what your own Python code looks like behind snakepit.

Served with  adapter = "sentiment:Sentiment"  and  pythonpath = ["examples/custom_adapter"].
"""
import time
from typing import Dict, Iterator, Union

from snakepit_bridge import Adapter, Context, command

POSITIVE = {"good", "great", "love", "excellent", "happy"}
NEGATIVE = {"bad", "awful", "hate", "terrible", "sad"}


class Sentiment(Adapter):
    def __init__(self) -> None:
        # Expensive set-up (a model, a tokenizer) happens once per worker process.
        self.loaded_at = time.time()

    @command
    def score(self, text: str) -> Dict[str, Union[str, float]]:
        "Score one text in [-1, 1]."
        words = text.lower().split()
        hits = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        return {"text": text, "score": max(-1.0, min(1.0, hits / max(len(words), 1) * 3))}

    @command
    def tokens(self, text: str) -> Iterator[Dict[str, Union[int, str]]]:
        "Stream the words of a text, one chunk each."
        for i, word in enumerate(text.split()):
            yield {"i": i, "token": word}

    @command
    def remember(self, text: str, ctx: Context) -> Dict[str, int]:
        "Keep texts in the session; return how many this session has seen."
        if ctx.session is None:
            raise ValueError("remember needs a session_id")
        seen = ctx.session.state.setdefault("texts", [])
        seen.append(text)
        return {"seen": len(seen)}

    @command
    def strict(self, text: str) -> Dict[str, Union[str, float]]:
        "Refuse empty input with a Python exception (it reaches the caller with its traceback)."
        if not text.strip():
            raise ValueError("text must not be empty")
        return self.score(text)
