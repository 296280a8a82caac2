"""Session: step a generation one token at a time, go back, branch; everything recorded in a Trace."""

from __future__ import annotations

import logging
import operator
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .cancel import cancellable
from .chat import generation_eos_ids, normalise_messages
from .errors import Cancelled, PromptError, SessionError
from .sampling import SamplingSettings, choose, distribution
from .trace import LazyLogits, PatternBlock, StepInfo, Trace

if TYPE_CHECKING:
    from .model import Forward, Model

log = logging.getLogger(__name__)


def live_events(history: list) -> list:
    """The events of `history` still in effect: each "back" cancels the latest step or mask before it."""
    stack: list = []
    for event in history:
        if event[0] == "back":
            if stack:
                stack.pop()
        else:
            stack.append(event)
    return stack


def stop_token_ids(model: Model) -> tuple[int, ...]:
    """Every id whose choice ends a generation: config.json's eos ids, generation_config.json's eos ids
    (instruction-tuned checkpoints list their end-of-turn tokens there) and the end-of-turn tokens the
    chat template writes (<|eot_id|>, <|im_end|>, <end_of_turn>, ...)."""
    ids = (*model.config.eos_token_ids, *generation_eos_ids(getattr(model, "folder", None)),
           *model.tokenizer.end_of_turn_ids())
    return tuple(dict.fromkeys(i for i in ids if 0 <= i < model.config.vocab_size))


@dataclass(frozen=True)
class Step:
    """The result of one step: the chosen token and the distribution it was chosen from."""

    position: int
    token_id: int
    token: str
    how: str
    probs: np.ndarray  # next-token probabilities after temperature / top-k / top-p (float32 [vocab])
    logits: np.ndarray  # raw logits of that position (float32 [vocab])

    @property
    def prob(self) -> float:
        return float(self.probs[self.token_id])



def expert_gates(model: object) -> dict[int, dict[int, float]]:
    """The model's expert gates ({} for models without experts to gate: the native engine, a remote one)."""
    get = getattr(model, "expert_gates", None)
    return get() if get is not None else {}

class Session:
    """Decoder and encoder-decoder models: generate token by token with a KV cache.
    Encoder-only models: each step fills the first [MASK] with a masked-LM prediction.

    Chat: `messages` ([{"role": "system" | "user" | "assistant", "content": ...}], instead of a prompt)
    are rendered through the checkpoint's chat template with the generation prompt, and those ids are
    the prompt exactly (the template writes its own special tokens); `chat_options` are extra template
    variables (e.g. {"enable_thinking": False}). Generation stops at any of `stop_ids`."""

    def __init__(
        self,
        model: Model,
        prompt: str | Sequence[int] | None = None,
        source: str | Sequence[int] | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        greedy: bool = True,
        capture: bool | Collection[str] = True,  # False, True (every layer) or the capture names to record
        messages: Sequence[Mapping[str, Any]] | None = None,
        chat_options: Mapping[str, Any] | None = None,
        cancel: Any = None,  # a threading.Event or callable: set from another thread, it stops the prefill (Cancelled)
    ) -> None:
        self.model = model
        self.settings = SamplingSettings(temperature, top_k, top_p, greedy, seed)
        self.capture = capture
        self._steps: list[StepInfo] = []
        self._trace: Trace | None = None
        # every step / back / mask in order (branches included), enough to rebuild the session exactly
        self.history: list[tuple] = []
        self._gates = model.gates()  # head gates in force for every recorded forward
        self._neuron_gates = model.neuron_gates()  # and neuron gates
        self._expert_gates = expert_gates(model)  # and expert gates (transformers-backend MoE models)
        self.stop_ids = stop_token_ids(model) if model.family != "encoder" else ()
        # the chat this session's prompt was rendered from (None for a plain prompt), kept for saving / display
        self.messages: tuple[dict[str, Any], ...] | None = None
        self.chat_options: dict[str, Any] = dict(chat_options or {})
        family = model.family
        if messages is not None:
            prompt = self._render_chat(messages, prompt, source)
        if family == "encoder-decoder":
            if source is None:
                raise PromptError("an encoder-decoder model needs a source text for its encoder")
            self.source_ids = model.encoder_ids(source, "source")
        elif source is not None:
            raise PromptError(f"a {family} model has no encoder input; pass only a prompt")
        else:
            self.source_ids = None
        if family == "encoder":
            self._ids = model.encoder_ids(prompt if prompt is not None else "", "prompt")
            self.prompt_ids = list(self._ids)
            with cancellable(cancel):
                self._refresh_encoder()
            return
        self._ids = model.decoder_ids(prompt)
        self.prompt_ids = list(self._ids)
        self.n_prompt = len(self._ids)
        self._memory = None
        self._encoder_blocks: dict[str, tuple[PatternBlock, ...]] = {}
        if self.source_ids is not None:
            with cancellable(cancel):
                enc = model.encode(self.source_ids, capture)
            self._memory = enc.hidden
            self._encoder_blocks = {k: tuple(v) for k, v in enc.blocks.items()}
        self._cache = model.new_cache()
        self._blocks: dict[str, list[PatternBlock]] = {}
        self._logit_rows: list[np.ndarray | LazyLogits] = []
        with cancellable(cancel):  # a cancelled prefill raises before this new session exists anywhere
            self._add(model.decode(self._ids, self._cache, self._memory, capture))
        self._tokens = model.tokenizer.token_strings(self._ids)

    def _render_chat(self, messages: Sequence[Mapping[str, Any]], prompt: object, source: object) -> list[int]:
        model = self.model
        if prompt is not None:
            raise PromptError("give either a prompt or chat messages, not both")
        if model.family != "decoder" or source is not None:
            raise PromptError(f"chat messages need a decoder-only model with a chat template; this is a {model.family} model")
        if not model.tokenizer.has_chat_template:
            raise PromptError(f"{model.name} has no chat template (no chat_template in tokenizer_config.json and no "
                              "chat_template.jinja); type a plain prompt instead")
        reserved = sorted(set(self.chat_options) & {"messages", "add_generation_prompt", "tools", "documents"})
        if reserved:
            raise PromptError(f"chat_options cannot set {', '.join(reserved)}: the session renders the messages "
                              "itself, with the generation prompt")
        chat = normalise_messages(messages)
        ids = model.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, **self.chat_options)
        if not ids:
            raise PromptError("the chat template rendered these messages as no tokens at all")
        self.messages = tuple(chat)
        return ids

    # -- settings -----------------------------------------------------------------------------
    def set_sampling(self, **changes) -> None:
        """Change temperature / top_k / top_p / greedy / seed; no forward pass is needed."""
        s = self.settings
        self.settings = SamplingSettings(**{**s.__dict__, **changes})

    @property
    def temperature(self) -> float:
        return self.settings.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.set_sampling(temperature=value)

    def distribution(self, position: int | None = None) -> np.ndarray:
        """Probabilities at `position` (default: the next token) under the current settings and head gates."""
        self._sync_gates()
        logits = self._logits_at(position)
        s = self.settings
        return distribution(logits, s.temperature, s.top_k, s.top_p)

    # -- state --------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.model.family

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def steps(self) -> tuple[StepInfo, ...]:
        return tuple(self._steps)

    @property
    def reply(self) -> str:
        """The text generated after the prompt, without the stop token that ended it (a chat's next turn is
        `[*session.messages, {"role": "assistant", "content": session.reply}, {"role": "user", ...}]`)."""
        if self.family == "encoder":
            return ""
        new = self._ids[self.n_prompt:]
        if new and new[-1] in self.stop_ids:
            new = new[:-1]
        return self.model.tokenizer.decode(new, skip_special_tokens=True)

    @property
    def finished(self) -> bool:
        if self.family == "encoder":
            return self._next_mask() is None
        if self._steps and self._ids[-1] in self.stop_ids:
            return True
        return len(self._ids) >= self.model.max_positions

    def _why_finished(self) -> str:
        if self.family == "encoder":
            return "there is no [MASK] token left to fill; mask a token first"
        if len(self._ids) >= self.model.max_positions:
            return f"the context is full ({self.model.max_positions} tokens); go back or start a new session"
        return (f"the end-of-sequence token {self.model.tokenizer.display(self._ids[-1])} was chosen; "
                "go back or branch to continue")

    def _next_mask(self) -> int | None:
        mask = self.model.config.mask_token_id
        for i, t in enumerate(self._ids):
            if t == mask:
                return i
        return None

    def _logits_at(self, position: int | None) -> np.ndarray:
        if self.family == "encoder":
            if self._enc_logits is None:
                raise SessionError(self.model.no_logits_reason or "no predictions")
            pos = self._next_mask() if position is None else self._check_position(position)
            if pos is None:
                raise SessionError(self._why_finished())
            return self._enc_logits[pos]
        if position is None:
            return self._logit_rows[-1][-1]
        return self.trace.logits_at(self._check_position(position))

    def _check_position(self, position: int) -> int:
        if not isinstance(position, (int, np.integer)) or not 0 <= position < len(self._ids):
            raise SessionError(f"position {position} is outside 0..{len(self._ids) - 1}")
        return int(position)

    def _sync_gates(self) -> None:
        """Head gates changed on the model since the last forward: recompute, so patterns, logits and
        the recorded gates agree."""
        if (self.model.gates() != self._gates or self.model.neuron_gates() != self._neuron_gates
                or expert_gates(self.model) != self._expert_gates):
            self.recompute()

    def _add(self, fwd: Forward) -> None:
        for name, blocks in fwd.blocks.items():
            self._blocks.setdefault(name, []).extend(blocks)
        if fwd.lazy_logits is not None:
            self._logit_rows.append(fwd.lazy_logits)
        self._logit_rows.append(fwd.logits[None, :])

    # -- stepping -----------------------------------------------------------------------------
    def step(self, token_id: int | None = None, cancel: Any = None) -> Step:
        """Choose the next token (greedy or sampled), or force `token_id`, and feed it to the model. `cancel` (a
        threading.Event or callable), set from another thread, stops the forward at its next layer: Cancelled, and
        the session is as it was before the step (the cache rolled back, nothing recorded)."""
        self._sync_gates()
        if self.finished:
            raise SessionError(f"cannot step: {self._why_finished()}")
        position = self._next_mask() if self.family == "encoder" else len(self._ids)
        logits = self._logits_at(None)
        if token_id is None:
            token_id, probs = choose(logits, self.settings, position)
            how = "greedy" if self.settings.greedy else "sampled"
        else:
            token_id = self._check_token(token_id)
            probs = self.distribution()
            how = "forced"
        with cancellable(cancel):
            self._feed(position, token_id, how, float(probs[token_id]))
        return Step(position, token_id, self._steps[-1].token, how, probs, logits)

    def _feed(self, position: int, token_id: int, how: str, prob: float) -> None:
        if self.family == "encoder":
            self._replace(position, token_id, how, prob)
        else:
            token = self.model.tokenizer.display(token_id)
            fwd = self.model.decode([token_id], self._cache, self._memory, self.capture)
            self._ids.append(token_id)
            self._tokens.append(token)
            self._add(fwd)
            self._steps.append(StepInfo(position, token_id, token, how, prob))
        self.history.append(("step", token_id, how, prob))
        self._trace = None

    def recompute(self) -> None:
        """Run the prompt and replay the history again on the model as it is now (e.g. after head gates
        changed): same tokens, fresh patterns and logits. Only the steps still standing are replayed,
        not the branches undone on the way, so the cost follows the current length, not every step ever taken."""
        st = self.settings
        fresh = Session(self.model, self.prompt_ids, source=self.source_ids, temperature=st.temperature, top_k=st.top_k,
                        top_p=st.top_p, seed=st.seed, greedy=st.greedy, capture=self.capture)
        # the same ids, not a new rendering (a template may write today's date)
        fresh.messages, fresh.chat_options = self.messages, self.chat_options
        fresh.replay(live_events(self.history))
        fresh.history = list(self.history)
        self.__dict__.update(fresh.__dict__)

    def replay(self, history: list) -> None:
        """Re-apply a recorded history (see `history`): tokens are fed as recorded, with their original
        "how" and probability, so the trace is the one that was saved."""
        for event in history:
            if event[0] == "step":
                _, token_id, how, prob = event
                if self.finished:
                    raise SessionError(f"cannot replay: {self._why_finished()}")
                position = self._next_mask() if self.family == "encoder" else len(self._ids)
                self._feed(position, self._check_token(token_id), str(how), float(prob))
            elif event[0] == "back":
                self.back()
            elif event[0] == "mask":
                self.mask(int(event[1]))
            else:
                raise SessionError(f"unknown session event {event[0]!r}")

    def back(self) -> StepInfo:
        """Undo the last step. Decoders truncate the KV cache; nothing before it is recomputed."""
        if not self._steps:
            raise SessionError("nothing to undo: the session is back at its prompt")
        self._sync_gates()
        if self.family == "encoder":
            last = self._steps[-1]
            self._ids[last.position] = last.replaced_id
            try:
                self._refresh_encoder()
            except BaseException:
                self._ids[last.position] = last.token_id
                raise
            self._steps.pop()
        else:
            last = self._steps.pop()
            self._ids.pop()
            self._tokens.pop()
            self._cache.truncate(len(self._ids))
            for blocks in self._blocks.values():
                blocks.pop()
            self._logit_rows.pop()
        self.history.append(("back",))
        self._trace = None
        return last

    def branch(self, token_id: int, cancel: Any = None) -> Step:
        """Same prefix, another future: undo the last step and force `token_id` instead. A `cancel` during its
        forward (Cancelled) puts the undone step back, so the session is as it was."""
        token_id = self._check_token(token_id)
        history = list(self.history)
        undone = self.back()
        try:
            return self.step(token_id, cancel=cancel)
        except Cancelled:
            self.restore_steps([undone])
            self.history = history
            raise

    def restore_steps(self, steps: Sequence[StepInfo]) -> None:
        """Feed steps undone by back() again, oldest first, as they were (token, how, probability): what a cancelled
        branch uses to leave the session as it was. One forward each; nothing cancels them."""
        self.replay([("step", st.token_id, st.how, st.prob) for st in steps])

    def mask(self, position: int) -> StepInfo:
        """Encoder-only: replace the token at `position` with the mask token (a step of its own)."""
        if self.family != "encoder":
            raise SessionError("masking applies to encoder-only (masked-LM) models; decoders step forward instead")
        self._sync_gates()
        mask = self.model.config.mask_token_id
        if mask is None:
            raise SessionError("this model has no mask token")
        if not 0 <= position < len(self._ids):
            raise SessionError(f"position {position} is outside 0..{len(self._ids) - 1}")
        if self.model.tokenizer.is_special(self._ids[position]):
            raise SessionError(f"position {position} holds a special token; mask a word token instead")
        self._replace(position, mask, "masked", 1.0)
        self.history.append(("mask", position))
        self._trace = None
        return self._steps[-1]

    def _check_token(self, token_id: int) -> int:
        try:
            token_id = operator.index(token_id)
        except TypeError as exc:
            raise SessionError(f"a token id must be a whole number, not {token_id!r}") from exc
        if not 0 <= token_id < self.model.config.vocab_size:
            raise SessionError(f"token id {token_id} is outside this model's vocabulary (0..{self.model.config.vocab_size - 1})")
        return token_id

    # -- encoder-only -------------------------------------------------------------------------
    def _replace(self, position: int, token_id: int, how: str, prob: float) -> None:
        old = self._ids[position]
        self._ids[position] = token_id
        try:
            self._refresh_encoder()
        except BaseException:
            self._ids[position] = old
            raise
        self._steps.append(StepInfo(position, token_id, self.model.tokenizer.display(token_id), how, prob, old))

    def _refresh_encoder(self) -> None:
        fwd = self.model.encode(self._ids, self.capture)
        self._enc_blocks = {k: tuple(v) for k, v in fwd.blocks.items()}
        self._enc_logits = fwd.logits
        self._tokens = self.model.tokenizer.token_strings(self._ids)

    # -- trace --------------------------------------------------------------------------------
    @property
    def trace(self) -> Trace:
        self._sync_gates()
        if self._trace is None:
            self._trace = self._make_trace()
        return self._trace

    def _make_trace(self) -> Trace:
        m, tok = self.model, self.model.tokenizer
        special = tuple(tok.is_special(i) for i in self._ids)
        if self.family == "encoder":
            return m.make_trace(token_ids=tuple(self._ids), tokens=tuple(self._tokens), special=special,
                                n_prompt=len(self._ids), blocks=dict(self._enc_blocks),
                                logit_rows=(self._enc_logits,) if self._enc_logits is not None else None,
                                steps=tuple(self._steps), gates=self._gates, neuron_gates=self._neuron_gates,
                                expert_gates=self._expert_gates)
        blocks = {**self._encoder_blocks, **{k: tuple(v) for k, v in self._blocks.items()}}
        src = self.source_ids
        return m.make_trace(
            token_ids=tuple(self._ids), tokens=tuple(self._tokens), special=special, n_prompt=self.n_prompt,
            blocks=blocks, logit_rows=tuple(self._logit_rows), steps=tuple(self._steps), gates=self._gates,
            neuron_gates=self._neuron_gates, expert_gates=self._expert_gates,
            keys=self._cache.key_views(), source_ids=tuple(src) if src is not None else None,
            source_tokens=tuple(tok.token_strings(src)) if src is not None else None,
            source_special=tuple(tok.is_special(i) for i in src) if src is not None else None,
        )
