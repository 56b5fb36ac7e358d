"""How good a local stand-in is, measured on the user's own stack (`nonstop eval`):

    tasks.py     the suite: Claude Code-shaped requests and what a right answer is (pure)
    score.py     the mechanical scorer: marks per category, the scorecard (pure)
    runner.py    sending the suite through the gateway's own backends, reading replies
    identity.py  which model a backend serves, and the key that changes with it
    results.py   runs stored in the state database; `latest_scores()` for routing and status
    verdict.py   a backend's last score as one line, and its entry in the status document
    advice.py    what `doctor` says: the verdict, and a better model the server already has
    auto.py      `EvalWatch`: the running gateway's drift check and background re-runs

Imports stay in the modules: importing the package loads nothing.
"""
