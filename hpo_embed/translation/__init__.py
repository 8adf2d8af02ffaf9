"""The translate stage: official Babelon files (``babelon``, ``official``), the per-ID file
schema (``schema``), planning (``plan``), MT backends and their scheduler (``mt``), the stage
(``translate``)."""
