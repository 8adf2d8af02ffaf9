"""The GPU profile's tools: the profile switcher, the memory/time estimate, the preflight
checks (device, precision, models resolvable offline) and the short GPU check."""
