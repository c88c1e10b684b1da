"""The data stages, raw -> shards, one module (or small package) each: its transform, its
declaration (core.runner) and its expectations (core.gate)."""
