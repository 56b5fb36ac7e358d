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
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian packages for the browser and shared-state tests:$missing"
        apt-get update -qq >/dev/null
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "missing Debian packages:$missing (the tests that need them fail in CI)" >&2
    fi
fi
