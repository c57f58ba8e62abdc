# lme4 < 1.1-33's refit() REML bug and its in-process fix; sourced by lme4_responses.R,
# lme4_bootstrap.R and tests/fixtures/bootstrap/make_bootstrap.R.
#
# lme4 < 1.1-33 builds refit()'s response module with REML = isREML(object) (= 1) instead of
# the number of fixed effects p, so for REML fits with p > 1 refit() optimizes -- and
# REMLcrit() reports -- a criterion with n - 1 in place of n - p. Upstream fixed it on
# 2023-04-12 (lme4 commit 58b0f45b, "fixed ancient REML-setting bug in refit") by using
# REML = object@resp$REML.
#
# fixed_refit(m, y) refits m to the response y and returns
#   bug: whether the refit lost m's REML setting (never for ML fits);
#   fun: where it did, a copy of lme4:::refit.merMod with exactly upstream's change (same
#        code path otherwise), if that copy refits correctly; else NULL.
# Callers use fun directly, or register it with
#   registerS3method("refit", "merMod", fun, envir = asNamespace("lme4"))
# where lme4 itself calls refit() (bootMer).
fixed_refit <- function(m, y) {
  probe <- suppressWarnings(suppressMessages(refit(m, y)))
  if (probe@resp$REML == m@resp$REML) return(list(bug = FALSE, fun = NULL))
  src <- deparse(body(lme4:::refit.merMod))
  if (sum(grepl("REML = isREML(object)", src, fixed = TRUE)) != 1)
    return(list(bug = TRUE, fun = NULL))
  f <- lme4:::refit.merMod
  body(f) <- parse(text = sub("REML = isREML(object)", "REML = object@resp$REML", src,
                              fixed = TRUE))[[1]]
  environment(f) <- asNamespace("lme4")
  probe <- suppressWarnings(suppressMessages(f(m, y)))
  list(bug = TRUE, fun = if (probe@resp$REML == m@resp$REML) f else NULL)
}
