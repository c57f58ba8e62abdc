"""Process-wide JAX settings jaxlmm relies on.

* float64 (``jax_enable_x64``) is switched on at import: mixed-model criteria need it.
* JAX's persistent compilation cache is pointed at ``~/.cache/jaxlmm/xla`` (or
  ``$JAXLMM_CACHE_DIR``; set it to ``0`` to leave JAX's cache settings alone) so a second
  process does not pay the compile again. A cache directory the user already configured
  is kept.
"""

import os

import jax


def configure() -> None:
    jax.config.update("jax_enable_x64", True)
    where = os.environ.get("JAXLMM_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache",
                                                             "jaxlmm", "xla"))
    if where == "0" or jax.config.jax_compilation_cache_dir:
        return
    try:
        os.makedirs(where, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
