"""The cloud's state per account: quota is per subscription or API key, so one
developer's 5-hour limit must not send everyone else behind the same nonstop to a local
model.

An account is a salted hash of the credential the client sent (an API key or an OAuth
bearer token); the credential itself is never stored or published. When the cloud's
replies name the organization (`anthropic-organization-id`), every key of that
organization shares one state. A request with no credential belongs to the default
account "".

Pure apart from the hash: the owner persists and publishes what `on_change` reports.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from nonstop.config import CloudConfig
from nonstop.routing.quota import QuotaState
from nonstop.routing.view import CloudState

ORG_HEADER = "anthropic-organization-id"
# Labels are short: enough to tell accounts apart, far too short to recover a key.
LABEL_LENGTH = 12
_CACHE = 1024
# Accounts kept at most: each distinct credential makes one, so a client sending a new key
# on every request must not grow memory, the metrics and the status without bound. The
# least recently used one whose cloud is serving goes first (it has nothing to remember
# that its next reply would not tell again); one still out goes only when none serves.
MAX_ACCOUNTS = 1024
# Past half of it, each request's account is marked as the most recently used.
_RECENT_FROM = MAX_ACCOUNTS // 2

OnChange = Callable[[str, QuotaState, str], None]


# The headers a credential is read from.
CREDENTIAL_HEADERS = frozenset({b"x-api-key", b"authorization"})


def credential_of(headers: Iterable[tuple[bytes, bytes]], *, collect: dict[str, str] | None = None,
                  names: frozenset[bytes] = CREDENTIAL_HEADERS) -> str:
    """The cloud credential a client sent: x-api-key, else the bearer token. In the same
    pass, the other headers in `names` (lower case; a set that holds CREDENTIAL_HEADERS
    too) go into `collect`, decoded."""
    key = bearer = ""
    for k, v in headers:
        if k not in names:  # most headers: one set lookup each
            continue
        if k == b"x-api-key":
            if v and not key:
                key = v.decode("latin-1")
        elif k == b"authorization":
            if v[:7].lower() == b"bearer ":
                bearer = v[7:].decode("latin-1").strip()
        elif collect is not None:
            collect[k.decode("latin-1")] = v.decode("latin-1")
    return key or bearer


class Accounts:
    def __init__(self, cfg: CloudConfig, *, salt: bytes, clock: Callable[[], float] = time.time,
                 on_change: OnChange | None = None, high_water: float = 0.9,
                 names: Mapping[str, str] | None = None):
        self.cfg = cfg
        self.salt = salt
        self.clock = clock
        self.on_change = on_change
        self.high_water = high_water
        self.names = dict(names or {})
        self.states: dict[str, QuotaState] = {}
        self.orgs: dict[str, str] = {}  # credential account -> "org:<id>"
        self._labels: OrderedDict[str, str] = OrderedDict()  # credential -> label (bounded)
        self.last = ""  # the account of the latest request: what a single user's status shows
        # Told of an account let go (see MAX_ACCOUNTS): its metrics go with it.
        self.on_forget: Callable[[str], None] | None = None

    # --- identity ------------------------------------------------------------------------------

    def label(self, credential: str) -> str:
        """The account a credential belongs to (its organization's, once known)."""
        if not credential:
            return ""
        found = self._labels.get(credential)
        if found is None:
            digest = hmac.new(self.salt, credential.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
            found = "key:" + digest[:LABEL_LENGTH]
            self._labels[credential] = found
            if len(self._labels) > _CACHE:
                self._labels.popitem(last=False)
        return self.orgs.get(found, found)

    def learn_org(self, account: str, headers: Mapping[str, str]) -> str:
        """The account a reply's organization header maps `account` to."""
        org = headers.get(ORG_HEADER)
        if not org or not account.startswith("key:"):
            return account
        merged = "org:" + hashlib.sha256(org.encode()).hexdigest()[:LABEL_LENGTH]
        self.alias(account, merged)
        return merged

    def alias(self, key: str, org: str) -> None:
        """File the API key's account `key` under its organization's, `org` (learnt from a
        reply, or from another instance of the fleet)."""
        if not key.startswith("key:") or not org.startswith("org:") or self.orgs.get(key) == org:
            return
        self.orgs[key] = org
        if len(self.orgs) > 4 * MAX_ACCOUNTS:  # keys of organizations: bounded too, oldest first
            del self.orgs[next(iter(self.orgs))]
        own = self.states.pop(key, None)
        theirs = self.states.get(org)
        # The key's state joins its organization's; of two, the one that keeps the cloud
        # out longer wins (a limit the key already met holds for the org too).
        if own is not None and (theirs is None or _longer_out(own, theirs)):
            self._adopt(org, own)

    def keys_of(self, org: str) -> list[str]:
        """The API keys' accounts filed under an organization's."""
        return [k for k, o in self.orgs.items() if o == org] if org.startswith("org:") else []

    def name(self, account: str) -> str:
        """A friendly name for an account, from [accounts] in the config, else its label."""
        return self.names.get(account) or self.names.get(account.partition(":")[2]) or account or "default"

    # --- state -------------------------------------------------------------------------------

    def get(self, account: str) -> QuotaState:
        account = self.orgs.get(account, account)  # a key whose organization is known: the org's
        states = self.states
        state = states.get(account)
        if state is None:
            state = QuotaState(self.cfg, clock=self.clock)
            state.forecast.high_water = self.high_water
            self._adopt(account, state)
            if len(states) > MAX_ACCOUNTS:
                self._forget_one(account)
        elif len(states) > _RECENT_FROM:  # many accounts: the order is their recency
            states[account] = states.pop(account)
        return state

    def _forget_one(self, new: str) -> None:
        """Let go of the least recently used account, one whose cloud serves if any does
        (never the default account, the latest request's, nor the one just made)."""
        keep = (self.last, "", new)
        victim = next((a for a, q in self.states.items() if a not in keep and q.state is CloudState.SERVING), None)
        if victim is None:
            victim = next((a for a in self.states if a not in keep), None)
        if victim is None:
            return
        del self.states[victim]
        for key in [k for k, o in self.orgs.items() if o == victim or k == victim]:
            del self.orgs[key]
        if self.on_forget is not None:
            self.on_forget(victim)

    def current(self) -> QuotaState:
        """The state a single-user status shows: the latest request's account."""
        return self.get(self.last)

    def _adopt(self, account: str, state: QuotaState) -> None:
        def changed(q: QuotaState, why: str) -> None:
            if self.on_change is not None:
                self.on_change(account, q, why)

        state.on_change = changed
        self.states[account] = state

    def snapshot(self) -> dict[str, Any]:
        return {"accounts": {a: q.snapshot() for a, q in self.states.items()}, "orgs": dict(self.orgs),
                "last": self.last}

    def restore(self, snap: Any) -> None:
        if not isinstance(snap, Mapping):
            return
        accounts = snap.get("accounts")
        if isinstance(accounts, Mapping):
            for account, s in accounts.items():
                if isinstance(account, str) and isinstance(s, Mapping):
                    self.get(account).restore(s)
        orgs = snap.get("orgs")
        if isinstance(orgs, Mapping):
            self.orgs.update({k: v for k, v in orgs.items() if isinstance(k, str) and isinstance(v, str)})
        if isinstance(snap.get("last"), str):
            self.last = snap["last"]


def _longer_out(a: QuotaState, b: QuotaState) -> bool:
    """Whether `a` keeps the cloud out longer than `b`."""
    if a.state is CloudState.SERVING:
        return False
    return b.state is CloudState.SERVING or a.until > b.until
