"""One dock each (prompt, tokens, attention, heads, candidates, logit lens, head statistics, inside this head); may import
core, widgets, rendering."""
