# Time lme4 on many responses that share one design (called by responses.py).
#
# Usage:
#   Rscript lme4_responses.R DESIGN.csv Y.bin N K FORMULA REML FACTORS RESPONSE \
#           K_REFIT REFIT_BUDGET_S K_LMER LMER_BUDGET_S OUT.json
#
# DESIGN.csv: the design columns (the response column holds response 1).
# Y.bin: K responses as raw little-endian float64, response after response (an N x K
# column-major matrix). FACTORS: comma-separated columns converted with factor().
#
# lme4-refit: m <- lmer(FORMULA) on response 1 (timed as "first"), then refit(m, Y[, j])
#   for j = 1..K_REFIT -- lme4's fast path for a new response (it reuses the model
#   structure and starts the optimizer at m's theta). Only the loop is timed; it stops
#   early once it has run REFIT_BUDGET_S seconds.
# lme4-lmer: a full lmer() per response (response column replaced), j = 1..K_LMER,
#   budget LMER_BUDGET_S; a warm-up lmer() on response 1 precedes the timed loop.
# Both loops read REMLcrit (or deviance), fixef and theta of every fit.

args <- commandArgs(trailingOnly = TRUE)
csv <- args[1]
ybin <- args[2]
n <- as.integer(args[3])
k <- as.integer(args[4])
form <- as.formula(args[5])
reml <- as.logical(args[6])
factors <- strsplit(args[7], ",", fixed = TRUE)[[1]]
resp <- args[8]
k_refit <- as.integer(args[9])
refit_budget <- as.numeric(args[10])
k_lmer <- as.integer(args[11])
lmer_budget <- as.numeric(args[12])
out <- args[13]

import_s <- unname(system.time(suppressPackageStartupMessages(library(lme4)))["elapsed"])
here <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE),
                                                       value = TRUE)[1])))
source(file.path(here, "lme4_refit_fix.R"))  # fixed_refit

cc <- setNames(rep("character", length(factors)), factors)
d <- read.csv(csv, colClasses = cc)
for (f in factors) d[[f]] <- factor(d[[f]])
con <- file(ybin, "rb")
Y <- matrix(readBin(con, "double", n = n * k, size = 8, endian = "little"), nrow = n, ncol = k)
close(con)
stopifnot(nrow(d) == n)

crit <- function(m) if (reml) REMLcrit(m) else deviance(m)

# run expr, muffling and recording warnings/messages; returns list(value, msgs)
quiet <- function(expr) {
  msgs <- character(0)
  value <- withCallingHandlers(
    expr,
    warning = function(w) {
      msgs <<- c(msgs, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(msg) {
      msgs <<- c(msgs, trimws(conditionMessage(msg)))
      invokeRestart("muffleMessage")
    }
  )
  list(value = value, msgs = msgs)
}

new_rec <- function() list(obj = numeric(0), fixef = list(), theta = list(), conv = logical(0),
                           n_warned = 0L, warnings = character(0))
record <- function(rec, m, msgs) {
  rec$obj <- c(rec$obj, crit(m))
  rec$fixef[[length(rec$fixef) + 1L]] <- unname(fixef(m))
  rec$theta[[length(rec$theta) + 1L]] <- unname(getME(m, "theta"))
  conv_msgs <- m@optinfo$conv$lme4$messages
  opt_conv <- m@optinfo$conv$opt
  rec$conv <- c(rec$conv, (is.null(opt_conv) || opt_conv == 0) && length(conv_msgs) == 0)
  if (length(msgs)) {
    rec$n_warned <- rec$n_warned + 1L
    rec$warnings <- head(unique(c(rec$warnings, msgs)), 10)
  }
  rec
}

# ---- lme4-refit ----------------------------------------------------------
d[[resp]] <- Y[, 1]
t0 <- proc.time()[["elapsed"]]
base <- quiet(lmer(form, data = d, REML = reml))
first_refit <- proc.time()[["elapsed"]] - t0
m0 <- base$value

# lme4 < 1.1-33's refit() optimizes the wrong REML criterion when p > 1 (lme4_refit_fix.R);
# where the installed lme4 has the bug, time upstream's fix and record that we did.
fx <- fixed_refit(m0, Y[, 1])
refit_bug <- fx$bug
refit_patched <- !is.null(fx$fun)
refit_fun <- if (refit_patched) fx$fun else refit

rf <- new_rec()
t0 <- proc.time()[["elapsed"]]
if (k_refit > 0) {
  for (j in seq_len(k_refit)) {
    r <- quiet(refit_fun(m0, Y[, j]))
    rf <- record(rf, r$value, r$msgs)
    if (proc.time()[["elapsed"]] - t0 > refit_budget) break
  }
}
refit_total <- proc.time()[["elapsed"]] - t0

# ---- lme4-lmer -----------------------------------------------------------
lr <- new_rec()
first_lmer <- NA
lmer_total <- 0
if (k_lmer > 0) {
  d[[resp]] <- Y[, 1]
  t0 <- proc.time()[["elapsed"]]
  invisible(quiet(lmer(form, data = d, REML = reml)))
  first_lmer <- proc.time()[["elapsed"]] - t0
  t0 <- proc.time()[["elapsed"]]
  for (j in seq_len(k_lmer)) {
    d[[resp]] <- Y[, j]
    r <- quiet(lmer(form, data = d, REML = reml))
    lr <- record(lr, r$value, r$msgs)
    if (proc.time()[["elapsed"]] - t0 > lmer_budget) break
  }
  lmer_total <- proc.time()[["elapsed"]] - t0
}

# ---- JSON ------------------------------------------------------------------
num <- function(x) {
  x <- as.numeric(x)
  s <- ifelse(is.finite(x), sprintf("%.17g", x), "null")
  paste0("[", paste(s, collapse = ","), "]")
}
nums <- function(lst) paste0("[", paste(vapply(lst, num, ""), collapse = ","), "]")
str1 <- function(x) {
  x <- gsub("\\\\", "\\\\\\\\", x)
  x <- gsub("\"", "\\\\\"", x)
  x <- gsub("[\r\n\t]", " ", x)
  paste0("\"", x, "\"")
}
strs <- function(x) paste0("[", paste(vapply(x, str1, ""), collapse = ","), "]")
bools <- function(x) paste0("[", paste(ifelse(x, "true", "false"), collapse = ","), "]")
block <- function(rec, first, total) {
  nf <- length(rec$obj)
  paste0(
    "{",
    "\"n_fitted\":", nf, ",",
    "\"first_s\":", if (is.na(first)) "null" else sprintf("%.6f", first), ",",
    "\"warm_total_s\":", sprintf("%.6f", total), ",",
    "\"per_response_s\":", if (nf > 0) sprintf("%.9g", total / nf) else "null", ",",
    "\"objective\":", num(rec$obj), ",",
    "\"fixef\":", nums(rec$fixef), ",",
    "\"theta\":", nums(rec$theta), ",",
    "\"converged\":", bools(rec$conv), ",",
    "\"n_warned\":", rec$n_warned, ",",
    "\"warnings\":", strs(rec$warnings),
    "}"
  )
}

json <- paste0(
  "{",
  "\"version\":", str1(as.character(packageVersion("lme4"))), ",",
  "\"matrix_version\":", str1(as.character(packageVersion("Matrix"))), ",",
  "\"r_version\":", str1(R.version.string), ",",
  "\"optimizer\":", str1(paste(m0@optinfo$optimizer, collapse = ",")), ",",
  "\"import_s\":", sprintf("%.6f", import_s), ",",
  "\"refit_reml_bug\":", if (refit_bug) "true" else "false", ",",
  "\"refit_patched\":", if (refit_patched) "true" else "false", ",",
  "\"refit\":", block(rf, first_refit, refit_total), ",",
  "\"lmer\":", block(lr, first_lmer, lmer_total),
  "}"
)
writeLines(json, out)
