#!/usr/bin/env bash
# System packages the full test suite needs beyond the SLURM cluster (scripts/slurm-cluster.sh):
# pdflatex, so the LaTeX tables are compiled rather than the test skipped. Idempotent: installs only
# what is missing, from Debian's packages (about two minutes the first time). Run as root (or with sudo).
set -euo pipefail

LATEX_PACKAGES=(texlive-latex-base texlive-latex-recommended)  # pdflatex, booktabs

log() { printf '[test-deps] %s\n' "$*" >&2; }

if command -v pdflatex >/dev/null 2>&1; then
  exit 0
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { log "pdflatex is missing and installing it needs root (or sudo)"; exit 1; }
  SUDO=(sudo)
fi
log "installing ${LATEX_PACKAGES[*]} (pdflatex for the LaTeX compile test)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${LATEX_PACKAGES[@]}" >/dev/null
command -v pdflatex >/dev/null 2>&1 || { log "pdflatex still missing after installing ${LATEX_PACKAGES[*]}"; exit 1; }
