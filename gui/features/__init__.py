"""Features that span panels (ablation, rollout, compare, session files, exports); may import panels, core, widgets, rendering."""
