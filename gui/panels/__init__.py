"""One dock each (prompt, tokens, attention, heads, candidates, logit lens, head statistics); may import core, widgets, rendering."""
