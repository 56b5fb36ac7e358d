#!/bin/sh
# What the integration, end-to-end and browser tests need besides Python packages:
# the Claude Code CLI (npm) and Debian's Chromium. Idempotent and quiet when present.
set -eu
CACHE=${CACHE:-$HOME/.cache/nonstop-dev}
CLAUDE_CODE_VERSION=${CLAUDE_CODE_VERSION:-2.1.332}
mkdir -p "$CACHE/claude"
if ! "$CACHE/claude/node_modules/.bin/claude" --version 2>/dev/null | grep -q "$CLAUDE_CODE_VERSION"; then
    echo "installing the Claude Code CLI $CLAUDE_CODE_VERSION into $CACHE/claude"
    npm install --silent --no-audit --no-fund --prefix "$CACHE/claude" "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
fi
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's chromium for the dashboard test"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is not installed: the browser test will be skipped" >&2
    fi
fi
