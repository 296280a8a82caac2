"""Chat templates: render system / user / assistant messages through a checkpoint's own Jinja template,
the way `transformers`' `apply_chat_template` does (same sandbox, options, helpers and variables), so the
rendered text and its ids are the ones the model was tuned on."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ChatTemplateError, TokenizerError

log = logging.getLogger(__name__)

CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
# Tokens that close a turn in the templates people use (Llama 3, Qwen / SmolLM 3, Gemma, Phi-3, Cohere);
# one counts as a stop token only when the template writes it and the tokenizer knows it.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|END_OF_TURN_TOKEN|>")
# The named special tokens transformers hands to every template (tokenization_utils_base.SPECIAL_TOKENS_ATTRIBUTES).
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Names under which a message's reasoning may arrive; templates read the first (transformers aliases them).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def read_templates(folder: Path, config: Mapping[str, Any]) -> dict[str, str]:
    """Every chat template of a checkpoint folder, by name ("default" for the main one). As in transformers,
    chat_template.jinja and additional_chat_templates/*.jinja take priority over tokenizer_config.json's
    `chat_template` (a string, or a list of {"name", "template"})."""
    templates: dict[str, str] = {}
    path = folder / CHAT_TEMPLATE_FILE
    if path.is_file():
        templates["default"] = _read_text(path)
    extra = folder / CHAT_TEMPLATE_DIR
    if extra.is_dir():
        for p in sorted(extra.glob("*.jinja")):
            templates[p.name.removesuffix(".jinja")] = _read_text(p)
    if templates:
        return templates
    value = config.get("chat_template")
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, (list, tuple)):
        try:
            return {str(t["name"]): str(t["template"]) for t in value}
        except (KeyError, TypeError) as exc:
            raise TokenizerError(f"{folder / 'tokenizer_config.json'}: chat_template must be a string or a list of "
                                 f"{{'name': ..., 'template': ...}} entries ({exc!r})") from exc
    if value is not None:
        raise TokenizerError(f"{folder / 'tokenizer_config.json'}: chat_template must be a string or a list, "
                             f"not {type(value).__name__}")
    return {}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read the chat template {path} ({exc})") from exc


def special_token_strings(config: Mapping[str, Any]) -> dict[str, str]:
    """The named special tokens of tokenizer_config.json as template variables (bos_token, eos_token, ...,
    plus model-specific `*_token` names and an `extra_special_tokens` mapping), as transformers exposes them."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if key in NAMED_SPECIAL_TOKENS or (key.endswith("_token") and isinstance(value, str)):
            text = _token_text(value)
            if text is not None:
                out[key] = text
    extra = config.get("extra_special_tokens")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            text = _token_text(value)
            if text is not None:
                out[str(key)] = text
    return out


def _token_text(value: Any) -> str | None:
    """A token as tokenizer_config.json writes it: a string, or a serialised AddedToken {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


@lru_cache(maxsize=32)
def compile_template(source: str):  # noqa: ANN201 - a jinja2.Template
    """Compile with the environment transformers uses: an immutable sandbox, trim_blocks + lstrip_blocks,
    loop controls, the {% generation %} tag, and its tojson / raise_exception / strftime_now / dict /
    namespace helpers."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %} marks assistant text for training masks; it renders its body."""

        tags = {"generation"}

        def parse(self, parser):  # noqa: ANN001, ANN201 - jinja2's extension interface
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):  # noqa: ANN001, ANN202
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # Jinja's own tojson escapes HTML characters; templates expect plain JSON
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
        return datetime.now().strftime(format)

    class TemplateDict:
        """dict() without attribute access to the class (sandbox escape routes)."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """namespace() that refuses underscore attributes (no reaching CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's own signature trick
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


def _plain(value: Any) -> Any:
    """Rebuild what the template sees from plain JSON types (as transformers does): the sandbox does not
    know which methods of other objects are dangerous."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plain dict copies of the messages, keys whose value is None dropped (templates handle a missing key,
    not None). Raises ChatTemplateError for anything that is not a list of role/content mappings."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                                f"not {type(messages).__name__}")
    if not messages:
        raise ChatTemplateError("there are no messages to render; give at least one")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ChatTemplateError(f"message {i} must be a dict with a 'role' and a 'content', not {m!r}")
        out.append({str(k): _plain(v) for k, v in m.items() if v is not None})
    return out


def _alias_reasoning(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in chat:
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        out.append({"thinking": reasoning, **m, "reasoning_content": reasoning} if reasoning is not None else m)
    return out


def render(template: str, messages: Sequence[Mapping[str, Any]], special_tokens: Mapping[str, str] | None = None,
           add_generation_prompt: bool = True, source: str = "the chat template", **kwargs: Any) -> str:
    """The text `template` renders for `messages`. `kwargs` are extra template variables (e.g.
    enable_thinking=False, date_string=...); they override the special tokens of the same name."""
    import jinja2

    chat = _alias_reasoning(normalise_messages(messages))
    variables = {**(special_tokens or {}), **_plain(kwargs)}
    try:
        compiled = compile_template(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"{source} is not valid Jinja (line {exc.lineno}: {exc.message}); "
                                "repair the template or type a plain prompt") from exc
    try:
        return compiled.render(messages=chat, tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"{source} refused these messages: {exc}") from exc
    except Exception as exc:  # a template indexing a missing message, a str method on None, ...
        raise ChatTemplateError(f"{source} failed on these messages ({type(exc).__name__}: {exc})") from exc


def end_of_turn_tokens(template: str | None) -> tuple[str, ...]:
    """The known end-of-turn tokens the template writes (e.g. <|eot_id|>, <|im_end|>, <end_of_turn>)."""
    if not template:
        return ()
    return tuple(t for t in END_OF_TURN_TOKENS if t in template)


def generation_eos_ids(folder: Path | None) -> tuple[int, ...]:
    """eos_token_id of generation_config.json (an int or a list), () when the folder has none."""
    if folder is None:
        return ()
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return ()
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        with suppress(TypeError, ValueError):
            if v is not None and not isinstance(v, bool):
                out.append(int(v))
    return tuple(out)
