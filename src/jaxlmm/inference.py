"""``confint(m, method=...)``: one entry point for the three kinds of intervals, as lme4's.

* "profile" (lme4's default): likelihood-profile intervals of the random-effect standard
  deviations and correlations, sigma and the fixed effects (profile.py);
* "Wald": beta_j +- z_{(1+level)/2} se_j for the fixed effects (satterthwaite.py);
* "boot": percentile (or ``boot_type="shortest"``) intervals of a parametric bootstrap
  (bootstrap.py; ``nsim=1000``, ``seed=0`` and bootstrap()'s options), rows named as lme4's
  (``.sig01``, ..., ``.sigma``, fixed effects).
"""

from __future__ import annotations

import pandas as pd

from .errors import JaxlmmError

METHODS = ("profile", "wald", "boot")


def confint(m, parm=None, level: float = 0.95, method: str = "profile",
            **kwargs) -> pd.DataFrame:
    """Confidence intervals for the parameters of ``m``; ``parm``: names to keep (lme4's
    ".sig01", ..., ".sigma" and fixed-effect names), default all."""
    kind = str(method).lower()
    if kind not in METHODS:
        raise JaxlmmError(f"confint: method must be one of 'profile', 'Wald', 'boot', got "
                          f"{method!r}")
    if kind == "profile":
        if kwargs:
            raise JaxlmmError(f"confint(method='profile'): unexpected options {sorted(kwargs)}")
        return m.profile().confint(level=level, which=parm)
    if kind == "wald":
        from .satterthwaite import wald_confint

        if kwargs:
            raise JaxlmmError(f"confint(method='Wald'): unexpected options {sorted(kwargs)}")
        out = wald_confint(m, level=level)
    else:
        from .bootstrap import bootstrap

        from .summary import format_perc

        nsim = kwargs.pop("nsim", 1000)
        seed = kwargs.pop("seed", 0)
        boot_type = kwargs.pop("boot_type", "percentile")
        ci = bootstrap(m, nsim, seed=seed, **kwargs).confint(level=level, method=boot_type)
        a = (1.0 - float(level)) / 2.0
        out = pd.DataFrame(ci[["lower", "upper"]].to_numpy(float),
                           index=[".sigma" if i == "sigma" else str(i) for i in ci.index],
                           columns=format_perc([a, 1.0 - a]))
    if parm is not None:
        names = [parm] if isinstance(parm, str) else list(parm)
        unknown = [p for p in names if p not in out.index]
        if unknown:
            raise JaxlmmError(f"confint: unknown parameter(s) {unknown}; available: "
                              f"{list(out.index)}")
        out = out.loc[names]
    return out
