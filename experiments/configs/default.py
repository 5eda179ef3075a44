"""The default config: `ep_jax.app.config`, every field a run can set (the quick start)."""

from ep_jax.app.config import get_config  # noqa: F401
