# Time lme4::lmer on one workload; one Rscript process per workload.
#
# Usage (called by run.py):
#   Rscript lme4_bench.R DATA.csv FORMULA REML FACTORS REPS MIN_TOTAL_S MAX_REPS SLOW_S OUT.json
#
# FACTORS is a comma-separated list of columns converted with factor().
# Only the lmer() call is timed (system.time(...)["elapsed"]); data are loaded
# beforehand. The first call is reported as "cold"; unless it exceeded SLOW_S
# seconds, further calls follow and their median is the reported fit time.

args <- commandArgs(trailingOnly = TRUE)
csv <- args[1]
form <- as.formula(args[2])
reml <- as.logical(args[3])
factors <- strsplit(args[4], ",", fixed = TRUE)[[1]]
reps <- as.integer(args[5])
min_total <- as.numeric(args[6])
max_reps <- as.integer(args[7])
slow_s <- as.numeric(args[8])
out <- args[9]

import_s <- unname(system.time(suppressPackageStartupMessages(library(lme4)))["elapsed"])

cc <- setNames(rep("character", length(factors)), factors)
d <- read.csv(csv, colClasses = cc)
for (f in factors) d[[f]] <- factor(d[[f]])

warns <- character(0)
fit_once <- function() {
  m <- NULL
  el <- withCallingHandlers(
    system.time(m <- lmer(form, data = d, REML = reml))["elapsed"],
    warning = function(w) {
      warns <<- unique(c(warns, conditionMessage(w)))
      invokeRestart("muffleWarning")
    },
    message = function(msg) {
      warns <<- unique(c(warns, trimws(conditionMessage(msg))))
      invokeRestart("muffleMessage")
    }
  )
  list(t = unname(el), m = m)
}

first <- fit_once()
warm <- numeric(0)
m <- first$m
last <- m
if (first$t <= slow_s) {
  while (length(warm) < reps || (sum(warm) < min_total && length(warm) < max_reps)) {
    r <- fit_once()
    warm <- c(warm, r$t)
    last <- r$m
  }
}

num <- function(x) {
  x <- as.numeric(x)
  s <- ifelse(is.finite(x), sprintf("%.17g", x), "null")
  paste0("[", paste(s, collapse = ","), "]")
}
str1 <- function(x) {
  x <- gsub("\\\\", "\\\\\\\\", x)
  x <- gsub("\"", "\\\\\"", x)
  x <- gsub("[\r\n\t]", " ", x)
  paste0("\"", x, "\"")
}
strs <- function(x) paste0("[", paste(vapply(x, str1, ""), collapse = ","), "]")

obj <- if (reml) REMLcrit(m) else deviance(m)
fe <- fixef(m)
conv_msgs <- m@optinfo$conv$lme4$messages
opt_conv <- m@optinfo$conv$opt
converged <- (is.null(opt_conv) || opt_conv == 0) && length(conv_msgs) == 0
fit_s <- if (length(warm)) median(warm) else first$t

json <- paste0(
  "{",
  "\"status\":\"ok\",",
  "\"version\":", str1(as.character(packageVersion("lme4"))), ",",
  "\"matrix_version\":", str1(as.character(packageVersion("Matrix"))), ",",
  "\"r_version\":", str1(R.version.string), ",",
  "\"blas\":", str1(paste(extSoftVersion()["BLAS"], La_library(), sep = " | ")), ",",
  "\"optimizer\":", str1(paste(m@optinfo$optimizer, collapse = ",")), ",",
  "\"import_s\":", sprintf("%.6f", import_s), ",",
  "\"cold_s\":", sprintf("%.6f", first$t), ",",
  "\"warm_s\":", num(warm), ",",
  "\"fit_s\":", sprintf("%.6f", fit_s), ",",
  "\"n_timed\":", max(length(warm), 1L), ",",
  "\"objective\":", sprintf("%.17g", obj), ",",
  "\"objective_last\":", sprintf("%.17g", if (reml) REMLcrit(last) else deviance(last)), ",",
  "\"converged\":", if (converged) "true" else "false", ",",
  "\"theta\":", num(getME(m, "theta")), ",",
  "\"fixef\":{", paste(paste0(vapply(names(fe), str1, ""), ":", sprintf("%.17g", fe)), collapse = ","), "},",
  "\"sigma\":", sprintf("%.17g", sigma(m)), ",",
  "\"optinfo\":{\"evaluations\":", num(m@optinfo$feval), ",\"messages\":", strs(conv_msgs), "},",
  "\"warnings\":", strs(head(warns, 20)),
  "}"
)
writeLines(json, out)
