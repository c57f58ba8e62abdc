# Time lme4's parametric bootstrap, bootMer(), for benchmarks/bootstrap.py.
#
# Usage:
#   Rscript lme4_bootstrap.R DESIGN.csv FORMULA REML FACTORS NSIM BUDGET_S SEED CHUNK OUT.json
#
# DESIGN.csv: the model's data (FACTORS: comma-separated columns converted with factor()).
# Fits m <- lmer(FORMULA) (timed as "fit_s"), then runs bootMer(m, FUN, nsim = CHUNK,
# seed = SEED + chunk index) chunk after chunk until NSIM replicates are done or the
# chunks have run BUDGET_S seconds; only the bootMer calls are timed (proc.time elapsed).
# FUN returns theta, sigma, the fixed effects, the criterion and convergence/singular
# flags, so the refits do what lme4's confint(m, method = "boot") makes them do.
#
# lme4 < 1.1-33 refit() (which bootMer calls for every replicate) optimizes the REML
# criterion with n - 1 in place of n - p (fixed upstream in lme4 commit 58b0f45b). The bug
# is detected and a copy of refit.merMod with exactly that one change (lme4_refit_fix.R)
# is registered before timing (recorded as refit_patched), so the timings are
# those of the fixed code path and the replicates are correct REML fits.

args <- commandArgs(trailingOnly = TRUE)
csv <- args[1]
form <- as.formula(args[2])
reml <- as.logical(args[3])
factors <- strsplit(args[4], ",", fixed = TRUE)[[1]]
nsim <- as.integer(args[5])
budget <- as.numeric(args[6])
seed <- as.integer(args[7])
chunk <- as.integer(args[8])
out <- args[9]

import_s <- unname(system.time(suppressPackageStartupMessages(library(lme4)))["elapsed"])
here <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE),
                                                       value = TRUE)[1])))
source(file.path(here, "lme4_refit_fix.R"))  # fixed_refit
cc <- setNames(rep("character", length(factors)), factors)
d <- read.csv(csv, colClasses = cc)
for (f in factors) d[[f]] <- factor(d[[f]])

t0 <- proc.time()[["elapsed"]]
m <- suppressWarnings(suppressMessages(lmer(form, data = d, REML = reml)))
fit_s <- proc.time()[["elapsed"]] - t0

fx <- fixed_refit(m, simulate(m, seed = 1)[[1]])
refit_bug <- fx$bug
refit_patched <- !is.null(fx$fun)
if (refit_patched) registerS3method("refit", "merMod", fx$fun, envir = asNamespace("lme4"))

crit <- function(x) if (reml) REMLcrit(x) else deviance(x)
fun <- function(x) {
  msgs <- x@optinfo$conv$lme4$messages  # the singular-fit message is counted apart
  conv <- x@optinfo$conv$opt == 0 && all(grepl("boundary (singular)", msgs, fixed = TRUE))
  c(getME(x, "theta"), sigma = sigma(x), fixef(x), objective = crit(x),
    singular = as.numeric(isSingular(x)), converged = as.numeric(conv))
}

tt <- NULL
elapsed <- 0
k <- 0L
repeat {
  done <- if (is.null(tt)) 0L else nrow(tt)
  if (done >= nsim || elapsed >= budget) break
  size <- min(chunk, nsim - done)
  t0 <- proc.time()[["elapsed"]]
  bb <- suppressWarnings(suppressMessages(bootMer(m, fun, nsim = size, seed = seed + k)))
  elapsed <- elapsed + proc.time()[["elapsed"]] - t0
  tt <- rbind(tt, bb$t)
  k <- k + 1L
}

num <- function(x) {
  x <- as.numeric(x)
  s <- ifelse(is.finite(x), sprintf("%.17g", x), "null")
  paste0("[", paste(s, collapse = ","), "]")
}
str1 <- function(x) paste0("\"", gsub("\"", "\\\\\"", x), "\"")
strs <- function(x) paste0("[", paste(vapply(x, str1, ""), collapse = ","), "]")
cols <- colnames(tt)
ok <- stats::complete.cases(tt)
json <- paste0(
  "{",
  "\"version\":", str1(as.character(packageVersion("lme4"))), ",",
  "\"r_version\":", str1(R.version.string), ",",
  "\"optimizer\":", str1(paste(m@optinfo$optimizer, collapse = ",")), ",",
  "\"import_s\":", sprintf("%.6f", import_s), ",",
  "\"fit_s\":", sprintf("%.6f", fit_s), ",",
  "\"refit_reml_bug\":", if (refit_bug) "true" else "false", ",",
  "\"refit_patched\":", if (refit_patched) "true" else "false", ",",
  "\"n_fitted\":", nrow(tt), ",",
  "\"n_failed\":", sum(!ok), ",",
  "\"chunks\":", k, ",",
  "\"total_s\":", sprintf("%.6f", elapsed), ",",
  "\"per_replicate_s\":", sprintf("%.9g", elapsed / nrow(tt)), ",",
  "\"columns\":", strs(cols), ",",
  "\"mean\":", num(colMeans(tt[ok, , drop = FALSE])), ",",
  "\"sd\":", num(apply(tt[ok, , drop = FALSE], 2, sd)),
  "}"
)
writeLines(json, out)
