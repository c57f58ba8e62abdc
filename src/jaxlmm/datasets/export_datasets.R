# Export lme4's bundled datasets to CSV for jaxlmm.datasets.
#
# Run from the repository root:
#     Rscript src/jaxlmm/datasets/export_datasets.R
#
# Writes src/jaxlmm/datasets/data/<name>.csv (InstEval.csv.gz) and
# src/jaxlmm/datasets/data/levels.json (factor levels in R's order and
# whether each factor is ordered) and src/jaxlmm/datasets/data/columns.json
# (R storage type of every column: "double", "integer" or "factor").  Doubles are written with the shortest
# of 15/16/17 significant digits that round-trips exactly.
# Requires the R packages lme4 and jsonlite (Debian: r-cran-lme4, which pulls
# in r-cran-jsonlite).

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grep("^--file=", args)])
here <- if (length(script) == 1) dirname(normalizePath(script)) else "src/jaxlmm/datasets"
outdir <- file.path(here, "data")
dir.create(outdir, showWarnings = FALSE, recursive = TRUE)

datasets <- c("sleepstudy", "Dyestuff", "Dyestuff2", "Penicillin", "Pastes",
              "InstEval", "cake")
gzipped <- c("InstEval")

# Shortest decimal representation (15, 16 or 17 significant digits) that
# parses back to exactly the same double.
fmt_double <- function(x) {
  out <- sprintf("%.15g", x)
  for (d in 16:17) {
    bad <- !is.na(x) & as.numeric(out) != x
    if (!any(bad)) break
    out[bad] <- sprintf(paste0("%.", d, "g"), x[bad])
  }
  out[is.na(x)] <- NA
  out
}

levels_info <- list()
column_types <- list()
for (name in datasets) {
  d <- get(name, envir = asNamespace("lme4"))
  stopifnot(is.data.frame(d))
  info <- list()
  out <- d
  for (col in names(d)) {
    x <- d[[col]]
    if (is.factor(x)) {
      info[[col]] <- list(levels = I(levels(x)), ordered = is.ordered(x))
      out[[col]] <- as.character(x)
    } else if (is.double(x)) {
      out[[col]] <- fmt_double(x)
    } else if (!is.integer(x)) {
      stop("unexpected column type in ", name, "$", col, ": ", class(x)[1])
    }
  }
  quote_cols <- which(vapply(d, is.factor, logical(1)))
  file <- file.path(outdir, paste0(name, if (name %in% gzipped) ".csv.gz" else ".csv"))
  con <- if (name %in% gzipped) gzfile(file, "w") else file(file, "w")
  write.csv(out, con, row.names = FALSE, quote = if (length(quote_cols)) unname(quote_cols) else FALSE,
            na = "")
  close(con)

  # Round-trip check: read back and compare with lme4's object.
  back <- read.csv(file, colClasses = ifelse(vapply(d, is.factor, logical(1)), "character",
                                              ifelse(vapply(d, is.integer, logical(1)), "integer", "numeric")))
  for (col in names(info))
    back[[col]] <- factor(back[[col]], levels = info[[col]]$levels, ordered = info[[col]]$ordered)
  if (!identical(back, d)) {
    # attributes such as row.names / formula may differ; compare columns exactly
    for (col in names(d)) if (!identical(back[[col]], d[[col]]))
      stop("round trip failed for ", name, "$", col)
  }
  column_types[[name]] <- lapply(d, function(x)
    if (is.factor(x)) "factor" else if (is.integer(x)) "integer" else "double")
  levels_info[[name]] <- if (length(info)) info else structure(list(), names = character())
  cat(sprintf("%-10s %6d rows -> %s\n", name, nrow(d), basename(file)))
}

writeLines(toJSON(levels_info, auto_unbox = TRUE, pretty = TRUE),
           file.path(outdir, "levels.json"))
writeLines(toJSON(column_types, auto_unbox = TRUE, pretty = TRUE),
           file.path(outdir, "columns.json"))
cat("lme4", as.character(packageVersion("lme4")), "\n")
