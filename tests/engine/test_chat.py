"""Chat templates: our rendering (text and ids) equals transformers' apply_chat_template for the real
templates of Llama 2 / 3, Qwen 2.5 / 3, Gemma 2 / 3, Phi-3 and SmolLM 3; Session(model, messages=...)
prompts with exactly those ids and stops at the template's end of turn."""

from __future__ import annotations

import json
import re

import jinja2
import pytest
from transformers import AutoTokenizer

from engine import PromptError, SessionError, load_model
from engine.errors import ChatTemplateError
from engine.session import Session, stop_token_ids
from engine.session_file import load_session, save_session
from engine.tokenizer import Tokenizer
from tests import chat_factories as cf

CHATS = {
    "user": [{"role": "user", "content": "Hello! How are you today?"}],
    "system": [{"role": "system", "content": "You are a helpful assistant."},
               {"role": "user", "content": "  café 🙂\nnew line  "}],
    "turns": [{"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello. Let there be light."},
              {"role": "user", "content": "And now?"}],
    "reasoning": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello.", "reasoning_content": "greet back", "tool_calls": None}],
}
END_OF_TURN = {"llama3": "<|eot_id|>", "llama3.0": "<|eot_id|>", "llama2": None, "gemma2": "<end_of_turn>",
               "gemma3": "<end_of_turn>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "smollm3": "<|im_end|>",
               "phi3": "<|end|>"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, build in cf.STYLES.items():
        folder = build(root / name)
        out[name] = (Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder))
    return out


def _hf(hf, messages, **kw):
    """transformers' result, or the exception type it raised."""
    try:
        return hf.apply_chat_template(messages, return_dict=False, **kw)
    except jinja2.TemplateError as exc:
        return type(exc)


@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("style", list(cf.STYLES))
def test_render_equals_transformers(pairs, style, chat):
    ours, hf = pairs[style]
    messages = CHATS[chat]
    for gen in (True, False):
        text = _hf(hf, messages, add_generation_prompt=gen, tokenize=False)
        if not isinstance(text, str):  # the template refuses these messages (Gemma 2 has no system role)
            with pytest.raises(ChatTemplateError, match="refused these messages"):
                ours.render_chat(messages, add_generation_prompt=gen)
            continue
        assert ours.render_chat(messages, add_generation_prompt=gen) == text
        ids = ours.apply_chat_template(messages, add_generation_prompt=gen)
        assert ids == _hf(hf, messages, add_generation_prompt=gen, tokenize=True)
        assert ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False) == text


@pytest.mark.parametrize("style", ["qwen3", "smollm3"])
@pytest.mark.parametrize("thinking", [True, False])
def test_enable_thinking(pairs, style, thinking):
    ours, hf = pairs[style]
    messages = CHATS["system"]
    text = ours.render_chat(messages, enable_thinking=thinking)
    assert text == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=thinking)
    assert text.endswith("</think>\n\n" if style == "qwen3" else "</think>\n") != thinking
    assert ours.apply_chat_template(messages, enable_thinking=thinking) == hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False, enable_thinking=thinking)


def test_template_variables_override(pairs):
    ours, hf = pairs["llama3"]
    kw = dict(date_string="26 Jul 2024", bos_token="")
    text = ours.render_chat(CHATS["system"], **kw)
    assert "Today Date: 26 Jul 2024" in text and not text.startswith("<|begin_of_text|>")
    assert text == hf.apply_chat_template(CHATS["system"], add_generation_prompt=True, tokenize=False, **kw)


@pytest.mark.parametrize("style, bos", [("llama3", "<|begin_of_text|>"), ("llama3.0", "<|begin_of_text|>"),
                                        ("gemma3", "<bos>"), ("llama2", "<s>")])
def test_template_bos_not_doubled(pairs, style, bos):
    ours, _ = pairs[style]
    ids = ours.apply_chat_template(CHATS["user"])
    assert ids[0] == ours.token_to_id(bos) and ids.count(ids[0]) == 1


@pytest.mark.parametrize("style", list(cf.STYLES))
def test_end_of_turn_ids(pairs, style):
    ours, _ = pairs[style]
    token = END_OF_TURN[style]
    assert ours.end_of_turn_ids() == ((ours.token_to_id(token),) if token else ())
    assert ours.has_chat_template


def _config(folder, **changes):
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg), encoding="utf-8")


def test_template_sources_as_transformers_reads_them(tmp_path):
    folder = cf.qwen(tmp_path / "q")
    named = [{"name": "default", "template": cf.QWEN25_TEMPLATE}, {"name": "plain", "template": cf.PHI3_TEMPLATE}]
    _config(folder, chat_template=named)  # a list of named templates
    ours, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.chat_templates.keys() == {"default", "plain"}
    for name in (None, "plain"):
        assert ours.render_chat(CHATS["user"], template=name) == hf.apply_chat_template(
            CHATS["user"], chat_template=name, add_generation_prompt=True, tokenize=False)
    # chat_template.jinja takes priority over tokenizer_config.json
    (folder / "chat_template.jinja").write_text(cf.QWEN3_TEMPLATE, encoding="utf-8")
    ours, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template == cf.QWEN3_TEMPLATE == hf.chat_template
    _config(folder, chat_template=None)
    (folder / "chat_template.jinja").unlink()
    ours = Tokenizer.from_folder(folder)
    assert ours.chat_template is None and not ours.has_chat_template and ours.end_of_turn_ids() == ()
    with pytest.raises(ChatTemplateError, match="no default chat template"):
        ours.render_chat(CHATS["user"])


@pytest.mark.parametrize("template, match", [
    ("{% for m in messages %}{{ m.content }", "not valid Jinja"),
    ("{{ raise_exception('Only user messages, please') }}", "Only user messages, please"),
    ("{{ messages.__class__.__mro__ }}", "failed on these messages|refused"),  # the sandbox holds
    ("{{ messages[3]['content'] | trim }}", "refused|failed"),
    ("{% set ns = namespace(_x=1) %}", "refused|failed"),
])
def test_template_errors_are_clear(pairs, template, match):
    ours, _ = pairs["qwen2.5"]
    with pytest.raises(ChatTemplateError, match=match):
        ours.render_chat(CHATS["user"], template=template)


@pytest.mark.parametrize("messages", ["hello", [], [{"content": "no role"}], ["not a dict"]])
def test_bad_messages(pairs, messages):
    ours, _ = pairs["qwen2.5"]
    with pytest.raises(ChatTemplateError):
        ours.render_chat(messages)


def test_helpers_and_generation_tag(pairs):
    ours, hf = pairs["qwen2.5"]
    template = ("{% generation %}{{ messages | tojson }}{% endgeneration %}{% for m in messages %}{% if loop.index > 1 %}"
                "{% break %}{% endif %}{{ dict(a=1) | tojson(indent=1) }}{{ strftime_now('%Y') }}{% endfor %}")
    messages = [{"role": "user", "content": "é <b>"}, {"role": "user", "content": "x"}]
    assert ours.render_chat(messages, template=template) == hf.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False)


# -- Session(model, messages=...) on a decoder the engine opens today (tiny GPT-2 with a ChatML template) ----

@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return cf.chat_gpt2(tmp_path_factory.mktemp("chatgpt2") / "m")


@pytest.fixture(scope="module")
def chat_model(chat_folder):
    return load_model(chat_folder, device="cpu")


def test_session_prompt_is_the_rendered_ids(chat_model, chat_folder):
    hf = AutoTokenizer.from_pretrained(chat_folder)
    messages = CHATS["system"]
    session = Session(chat_model, messages=messages)
    assert session.prompt_ids == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=False)
    assert session.messages == tuple(messages)
    tokens = session.trace.tokens
    assert tokens[0] == "<|im_start|>" and "".join(tokens).endswith("<|im_start|>assistant↵")
    assert session.trace.special[0] and chat_model.tokenizer.has_chat_template


def test_session_stops_at_end_of_turn(chat_model):
    tok = chat_model.tokenizer
    im_end, eos = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    session = Session(chat_model, messages=CHATS["user"])
    assert set(session.stop_ids) == {eos, im_end}
    session.step(tok.token_to_id("H"))
    assert not session.finished
    session.step(im_end)
    assert session.finished
    with pytest.raises(SessionError, match=re.escape("token <|im_end|> was chosen")):
        session.step()
    session.back()
    assert not session.finished
    session.branch(eos)
    assert session.finished


def test_stop_ids_from_generation_config(tmp_path):
    folder = cf.chat_gpt2(tmp_path / "m", generation_eos=[7, 2])
    model = load_model(folder, device="cpu")
    eos = model.tokenizer.token_to_id("<|endoftext|>")
    assert stop_token_ids(model) == (eos, 7, 2)  # config.json, generation_config.json, the template's <|im_end|> (2)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}), encoding="utf-8")
    assert stop_token_ids(model) == (eos, 9, 2)
    session = Session(model, messages=CHATS["user"])
    session.step(9)
    assert session.finished


@pytest.fixture(scope="module")
def tiny_gpt():
    return load_model("tiny-gpt", device="cpu")


def test_session_errors(chat_model, tiny_gpt):
    with pytest.raises(PromptError, match="not both"):
        Session(chat_model, "Hello", messages=CHATS["user"])
    with pytest.raises(PromptError, match="no chat template"):
        Session(tiny_gpt, messages=CHATS["user"])
    with pytest.raises(ChatTemplateError):
        Session(chat_model, messages=[{"content": "no role"}])
    with pytest.raises(PromptError, match="add_generation_prompt"):
        Session(chat_model, messages=CHATS["user"], chat_options={"add_generation_prompt": False})
    with pytest.raises(ChatTemplateError, match="Only users"):
        bad = "{{ raise_exception('Only users') }}"
        chat_model.tokenizer.chat_templates["default"], saved = bad, chat_model.tokenizer.chat_template
        try:
            Session(chat_model, messages=CHATS["user"])
        finally:
            chat_model.tokenizer.chat_templates["default"] = saved


def test_plain_prompt_sessions_unchanged(chat_model, tiny_gpt):
    session = Session(tiny_gpt, "In the beginning")
    assert session.messages is None and session.stop_ids == tiny_gpt.config.eos_token_ids
    session = Session(chat_model, "Hello world")
    assert session.prompt_ids == chat_model.tokenizer.encode("Hello world")


def test_saved_session_keeps_messages(chat_model, tmp_path):
    session = Session(chat_model, messages=CHATS["turns"], chat_options={"enable_thinking": False})
    session.step()
    session.step()
    session.back()
    path = save_session(session, tmp_path / "s.json")
    restored, _ = load_session(path, loader=lambda ref: chat_model)
    assert restored.messages == session.messages and restored.chat_options == {"enable_thinking": False}
    assert restored.ids == session.ids and restored.prompt_ids == session.prompt_ids
    chat_model.set_head_gate("self", 0, 1, 0.0)
    try:
        restored.trace  # noqa: B018 - recomputes after the gate changed
        assert restored.messages == session.messages
    finally:
        chat_model.clear_gates()


# -- end to end on tiny modern decoders: the chat prompt, greedy steps as transformers generates, stop -----

@pytest.mark.parametrize("style, config_cls, model_cls, eos", [
    ("llama3", "LlamaConfig", "LlamaForCausalLM", ("<|end_of_text|>", "<|eot_id|>")),
    ("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", ("<eos>",)),  # <end_of_turn> comes from the template
])
def test_chat_end_to_end_on_a_modern_decoder(tmp_path, style, config_cls, model_cls, eos):
    import torch
    from transformers import AutoModelForCausalLM

    folder = cf.chat_decoder(tmp_path / style, style, config_cls, model_cls, eos)
    model = load_model(folder, device="cpu")
    tok = model.tokenizer
    messages = CHATS["system"]
    session = Session(model, messages=messages)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert session.prompt_ids == prompt
    bos = hf_tok.bos_token_id
    assert prompt.count(bos) == 1 and prompt[0] == bos  # the template's BOS, not doubled

    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        x = torch.tensor([prompt])  # an explicit mask: generate would mask every id equal to the pad id (BOS here)
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert [session.step().token_id for _ in range(8)] == out[0, len(prompt):].tolist()

    turn = tok.end_of_turn_ids()[0]
    assert set(session.stop_ids) == {*(tok.token_to_id(t) for t in eos), turn}
    session.step(turn)
    assert session.finished
    assert session.trace.tokens[-1] == tok.id_to_token(turn)  # special tokens shown as written


def test_reply_feeds_the_next_turn(chat_model):
    tok = chat_model.tokenizer
    session = Session(chat_model, messages=CHATS["user"])
    for piece in tok.encode(" Fine, thanks.", special_tokens=False):
        session.step(piece)
    session.step(tok.token_to_id("<|im_end|>"))
    assert session.finished and session.reply == " Fine, thanks."
    nxt = Session(chat_model, messages=[*session.messages, {"role": "assistant", "content": session.reply},
                                        {"role": "user", "content": "Good."}])
    assert nxt.prompt_ids[:len(session.ids)] == session.ids  # the answered turn is the start of the next prompt
