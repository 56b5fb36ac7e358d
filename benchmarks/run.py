"""nonstop's benchmark suite: one command, results written to benchmarks/results/.

    python benchmarks/run.py            the full run (make bench), ~20 minutes on 2 cores
    python benchmarks/run.py --smoke    about two minutes (make bench-smoke; CI)
    python benchmarks/run.py --long     the full run with a 100,000-request memory run
    python benchmarks/run.py --peers    also LiteLLM's proxy and claude-spillway
    python benchmarks/run.py --profile  also py-spy profiles of nonstop under load
    python benchmarks/run.py --only-log only the request log's rounds and the in-process costs
    python benchmarks/run.py --baseline REV   also the code of git revision REV, in the same
                                        c=1 rounds (the full run does this by default with
                                        the published run's revision: results/BASELINE)

Everything runs on this machine, on 127.0.0.1: a fast fake upstream (upstream.py) that
parses what it is sent and answers with the cloud's quota headers, nonstop started as a
real process (`python -m nonstop serve --config ...`) in its default configuration (the
request log on, one [[local]] backend), the bare forwarder (forwarder.py: the floor of
nonstop's own stack), and the load generator in its own process (loadgen.py). Rounds
direct to the upstream, through the forwarder and through nonstop are interleaved in one
run, so the comparison is made under the same noise; added latency is "through" minus
"direct" (or minus the forwarder) at the same percentile. The scenarios of the targets
against the forwarder run again on fresh (nonstop, forwarder) pairs, and the targets read
all pairs pooled (forwarder_pairs). docs/performance.md explains
the method and what the numbers mean.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from harness import (  # noqa: E402
    HERE,
    ROOT,
    LoadGen,
    Proc,
    cpu_seconds,
    free_port,
    http_get,
    log_written,
    machine,
    machine_busy_seconds,
    median,
    peak_rss_mb,
    percentile,
    revision_source,
    rss_mb,
    source_fingerprint,
    start,
    start_upstream,
    thread_cpu,
    wait_http,
)


@dataclass
class Plan:
    rounds: int
    requests: dict[int, int]  # per concurrency, per target, per round
    streams_held: int
    throughput_requests: int
    growth_requests: int
    failover_rounds: int
    failover_requests: int
    translate_seconds: float
    max_round_seconds: float
    peer_round_seconds: float
    paced_requests: int
    log_requests: int
    relay_requests: int
    log_pairs: int  # fresh pairs of instances (log on, log off) for the log's rounds
    forwarder_pairs: int  # fresh (nonstop, forwarder) pairs beside the main one, for the headline
    failover_sets: int  # fresh failover instances, one after the other, their rounds pooled


PLANS = {
    "smoke": Plan(rounds=2, requests={1: 100, 64: 300}, streams_held=64,
                  throughput_requests=1000, growth_requests=3000, failover_rounds=2, failover_requests=60,
                  translate_seconds=1.0, max_round_seconds=15, peer_round_seconds=4,
                  paced_requests=192, log_requests=300, relay_requests=2, log_pairs=2,
                  forwarder_pairs=1, failover_sets=1),
    "full": Plan(rounds=4, requests={1: 1500, 64: 4000}, streams_held=256,
                 throughput_requests=6000, growth_requests=20000, failover_rounds=4, failover_requests=500,
                 translate_seconds=3.0, max_round_seconds=60, peer_round_seconds=10,
                 paced_requests=768, log_requests=3000, relay_requests=64, log_pairs=4,
                 forwarder_pairs=3, failover_sets=3),
}
# Concurrency 1 (one session), and 64 clients back to back (the ceiling: queueing in the
# slowest process). The paced round is the 64 streams a model's pace would give.
CONCURRENCY = (1, 64)
# The paced streams' upstream: a text delta every 25 ms for 1 s (40 deltas), as a model's pace.
PACED = {"x-fake-mode": "slow", "x-fake-interval": "0.025", "x-fake-hold": "1.0"}
# The scenarios of the targets against the bare forwarder: c=1 JSON and 64 unpaced streams
# (stream, concurrency). They are measured on several pairs of processes (forwarder_pairs).
PAIRED = ((False, 1), (True, 64))
# What a user runs: `nonstop init` writes a [[local]] backend, and the request log is on.
# The local stream relayed: 100 deltas, one every 20 ms (a model at 50 tokens a second).
RELAY_INTERVAL, RELAY_DELTAS = 0.02, 100
DEFAULT_LOCAL = '[[local]]\nname = "local"\nurl = "{url}"\n'
# The failover rounds' local server: the fake upstream's, speaking Anthropic Messages.
ANTHROPIC_LOCAL = '[[local]]\nname = "fake-local"\nurl = "{url}"\napi = "anthropic"\n'
# With the fake cloud's "limit-past" 429 (its reset already past), every request probes
# the cloud, meets the 429 and fails over (see start_failover).
PROBE_EVERY_REQUEST = "default_cooldown = 0\n"
# The revision whose full run the README and docs/performance.md publish: a full run
# measures it beside the code under test (start_baseline).
BASELINE_FILE = HERE / "results" / "BASELINE"


def nonstop_config(port: int, state: Path, cloud: str, local: str, *, cloud_extra: str = "", log: bool = True,
                   extra: str = "") -> str:
    """A benchmark's nonstop config: listening on 127.0.0.1:`port`, the fake `cloud`, no
    embedded server and no discovery, the request log on unless `log` is False, and
    `local` (the [[local]] blocks, DEFAULT_LOCAL in the default configuration)."""
    return (f'listen = "127.0.0.1:{port}"\nstate_dir = "{state}"\n'
            f'[cloud]\nurl = "{cloud}"\n{cloud_extra}'
            '[embedded]\nmode = "never"\n[discovery]\nenabled = false\n'
            f'[log]\nenabled = {"true" if log else "false"}\n' + extra + local)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.mode = "smoke" if args.smoke else "full"
        self.plan = PLANS[self.mode]
        if args.long:
            self.plan.growth_requests = 100_000
        if args.growth_requests:
            self.plan.growth_requests = args.growth_requests
        self.work = Path(tempfile.mkdtemp(prefix="nonstop-bench-"))
        self.procs: list[Proc] = []
        self.results: dict[str, Any] = {
            "date": dt.date.today().isoformat(),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "mode": self.mode + "".join(f" --{f.replace('_', '-')}" for f in ("long", "peers", "profile", "variants", "only_log")
                                        if getattr(args, f, False)),
            "machine": machine(),
            "source": source_fingerprint(),
            "plan": self.plan.__dict__,
            "notes": [],
        }
        self.lg: LoadGen | None = None
        self.targets: dict[str, dict[str, Any]] = {}  # name -> {url, path, pid, label}
        # Every nonstop started, by pid: its URL, to have its request log written at the end of
        # each of its rounds (see written()).
        self.nonstops: dict[int, str] = {}
        self.unwritten: set[str] = set()  # those whose log could not be read (noted once)
        # The main pair's rounds of the PAIRED scenarios, as measured (pooled in forwarder_pairs).
        self.paired_rounds: dict[tuple[bool, int], dict[str, list[dict[str, Any]]]] = {}

    # --- processes --------------------------------------------------------------------------

    def note(self, text: str) -> None:
        print("  note:", text, flush=True)
        self.results["notes"].append(text)

    def start_upstream(self) -> None:
        # Each port's default mode; "local-paced" is a local model at a fixed pace.
        modes = {"ok": "ok", "limit": "limit", "limit-past": "limit-past", "local": "ok",
                 "local-paced": f"paced:{RELAY_INTERVAL}:{RELAY_DELTAS}"}
        self.upstream, self.ports = start_upstream(modes, self.work)
        self.procs.append(self.upstream)
        self.up = {m: f"http://127.0.0.1:{p}" for m, p in self.ports.items()}

    def start_nonstop(self, name: str, cloud: str, cloud_extra: str = "", local: str | None = None, log: bool = True,
                      extra: str = "", source: Path | None = None) -> Proc:
        """nonstop in its default configuration (the request log on, one [[local]] backend:
        the fake upstream's local port) unless told otherwise; local="" for none. `source`:
        another revision's src/ folder to run instead of this one's."""
        if local is None:
            local = DEFAULT_LOCAL.format(url=self.up["local"])
        port = free_port()
        folder = self.work / name
        folder.mkdir()
        cfg = folder / "config.toml"
        cfg.write_text(nonstop_config(port, folder / "state", cloud, local, cloud_extra=cloud_extra, log=log, extra=extra))
        env = {"NONSTOP_STATE_DIR": str(folder / "state")}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        p = start(name, [sys.executable, "-m", "nonstop", "serve", "--config", str(cfg)], env=env, workdir=folder)
        self.procs.append(p)
        p.url = f"http://127.0.0.1:{port}"
        wait_http(p, p.url + "/health", timeout=60)
        self.nonstops[p.pid] = p.url
        p.extra["config"] = cfg.read_text()
        time.sleep(0.3)
        p.extra["idle_rss_mb"] = rss_mb(p.pid)
        return p

    def start_forwarder(self, name: str = "forwarder") -> Proc:
        port = free_port()
        folder = self.work / name
        folder.mkdir()
        p = start(name, [sys.executable, str(HERE / "forwarder.py"), "--listen", f"127.0.0.1:{port}",
                                "--upstream", self.up["ok"]], workdir=folder)
        self.procs.append(p)
        p.url = f"http://127.0.0.1:{port}"
        wait_http(p, p.url + "/_stats", timeout=30)
        time.sleep(0.3)
        p.extra["idle_rss_mb"] = rss_mb(p.pid)
        return p

    def stop_all(self) -> None:
        if self.lg is not None:
            self.lg.close()
        for p in reversed(self.procs):
            p.stop()

    def stats(self) -> dict[str, int]:
        return orjson.loads(http_get(self.up["ok"] + "/_stats")[1])["counts"]

    # --- one round --------------------------------------------------------------------------

    def measure(self, target: str, *, stream: bool, concurrency: int, requests: int, payload: str = "large",
                headers: dict[str, str] | None = None, expect: int = 200, path: str | None = None,
                warmup: int | None = None, stagger: float = 0.0, count_deltas: bool = False) -> dict[str, Any]:
        assert self.lg is not None
        t = self.targets[target]
        pids = {"target": t.get("pid"), "upstream": self.upstream.pid, "loadgen": self.lg.pid}
        cpu0 = {k: cpu_seconds(v, with_children=True) for k, v in pids.items() if v}
        busy0 = machine_busy_seconds()
        warm = warmup if warmup is not None else min(max(concurrency * 2, 20), requests)
        res = self.lg.call({
            "op": "run", "url": t["url"], "path": path or t["path"], "payload": payload, "stream": stream,
            "concurrency": concurrency, "requests": requests, "warmup": warm,
            "max_seconds": t.get("max_seconds", self.plan.max_round_seconds), "headers": headers or {}, "expect_status": expect, "stagger": stagger,
            "count_deltas": count_deltas,
        })
        self.written(t.get("pid"))
        cpu1 = {k: cpu_seconds(v, with_children=True) for k, v in pids.items() if v}
        busy = machine_busy_seconds() - busy0
        done = res["issued"] + warm
        res["warmup"] = warm
        res["cpu_us_per_request"] = {k: (cpu1[k] - cpu0[k]) / done * 1e6 for k in cpu0}
        # Shares of a core over the whole command (warm-up included, as in the CPU deltas).
        res["cpu_share"] = {k: (cpu1[k] - cpu0[k]) / max(res["elapsed"], 1e-9) for k in cpu0}
        res["rps"] = len(res["ttfb"]) / res["wall"] if res["wall"] else 0.0
        # Cores busy with other work on the machine meanwhile (the noise this round ran in).
        ours = sum(cpu1[k] - cpu0[k] for k in cpu0)
        res["others_cores"] = max(0.0, busy - ours) / max(res["elapsed"], 1e-9)
        if t.get("pid"):
            res["rss_mb"] = rss_mb(t["pid"], with_children=True)
        if res["errors"]:
            print(f"    {target}: {res['errors']} errors, e.g. {res['error_sample']}", flush=True)
        return res

    def written(self, pid: int | None) -> None:
        """For a nonstop: wait until its request log has written the round's rows (a read
        of its log waits for the writer), so that the writer's work for them falls inside
        the round whose CPU is counted, not in the next target's. (Its writer batches rows
        for up to half a second: a round that ended without this would leave the last of
        that work to whatever is measured next.)"""
        url = self.nonstops.get(pid) if pid else None
        if url is None:
            return
        why = log_written(url)
        if why is not None and url not in self.unwritten:
            self.unwritten.add(url)
            self.note(f"{url}: its request log could not be read at the end of a round ({why}); the writer's "
                      "last batch of such a round may fall outside it")

    def measure_together(self, names: list[str], *, stream: bool, concurrency: int, requests: int,
                         payload: str = "large") -> dict[str, dict[str, Any]]:
        """One round in which every target of `names` is driven at once, each by its own
        `concurrency` clients: they share the same seconds of the same machine, so a
        difference of their CPU per request is free of the drift between rounds."""
        assert self.lg is not None
        pids = {n: self.targets[n]["pid"] for n in names}
        warm = min(max(concurrency * 2, 20), requests)
        cpu0 = {n: sum(thread_cpu(p)) for n, p in pids.items()}  # to the ns: a tick is 3 µs a request here
        res = self.lg.call({"op": "together", "runs": [{
            "op": "run", "url": self.targets[n]["url"], "path": self.targets[n]["path"], "payload": payload,
            "stream": stream, "concurrency": concurrency, "requests": requests, "warmup": warm,
            "max_seconds": self.plan.max_round_seconds} for n in names]})["results"]
        for p in pids.values():
            self.written(p)
        cpu1 = {n: sum(thread_cpu(p)) for n, p in pids.items()}
        out = {}
        for n, r in zip(names, res, strict=True):
            r["warmup"] = warm
            r["cpu_us_per_request"] = {"target": (cpu1[n] - cpu0[n]) / (r["issued"] + warm) * 1e6}
            r["rps"] = len(r["ttfb"]) / r["wall"] if r["wall"] else 0.0
            r["others_cores"] = 0.0
            if r["errors"]:
                print(f"    {n}: {r['errors']} errors, e.g. {r['error_sample']}", flush=True)
            out[n] = r
        return out

    def rounds(self, names: list[str], rounds: int, per_round: bool = False,
               keep: dict[str, list[dict[str, Any]]] | None = None, **kw: Any) -> dict[str, dict[str, Any]]:
        """Interleaved A/B(/C...) rounds; the order flips every round. With per_round, each
        target's summary keeps every round's CPU per request (for paired differences).
        `keep`: each target's rounds, as measured, are added to it too."""
        per: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in range(rounds):
            order = names if r % 2 == 0 else list(reversed(names))
            for n in order:
                per[n].append(self.measure(n, **(kw | self.targets[n].get("kw", {}))))
        if keep is not None:
            for n, rs in per.items():
                keep.setdefault(n, []).extend(rs)
        out = {n: summarize(rs) for n, rs in per.items()}
        if per_round:
            for n, rs in per.items():
                out[n]["cpu_rounds"] = [r["cpu_us_per_request"].get("target") for r in rs]
        return out

    # --- the parts --------------------------------------------------------------------------

    def setup(self) -> None:
        print(f"nonstop benchmarks ({self.results['mode']}) in {self.work}", flush=True)
        self.start_upstream()
        self.lg = LoadGen()
        self.main = self.start_nonstop("nonstop", self.up["ok"])
        self.fwd = self.start_forwarder()
        time.sleep(1.0)
        self.results["memory"] = {"idle_rss_start_mb": rss_mb(self.main.pid)}
        self.targets["direct"] = {"url": self.up["ok"], "path": "/v1/messages?beta=true", "pid": None,
                                  "label": "direct to the fake upstream"}
        self.targets["forwarder"] = {"url": self.fwd.url, "path": "/v1/messages?beta=true", "pid": self.fwd.pid,
                                     "label": "through the bare forwarder (benchmarks/forwarder.py)"}
        self.targets["nonstop"] = {"url": self.main.url, "path": "/v1/messages?beta=true", "pid": self.main.pid,
                                   "label": "through nonstop, default configuration"}
        self.results["memory"]["forwarder_idle_rss_mb"] = self.fwd.extra["idle_rss_mb"]
        self.results["nonstop_config"] = self.main.extra["config"]

    def start_baseline(self) -> list[str]:
        """nonstop as it was at another revision (--baseline, or the published run's), run
        beside this one in the c=1 rounds: whether this code added latency is then read inside
        one run, not across days whose machines differ by up to 2x."""
        rev = self.args.baseline or (BASELINE_FILE.read_text().split()[0] if BASELINE_FILE.exists() else "")
        if not rev or rev == "none":
            return []
        src = self.baseline_source(rev)
        if src is None:
            return []
        try:
            p = self.start_nonstop("baseline", self.up["ok"], source=src)
        except RuntimeError as exc:  # an optional part: the run goes on without it
            self.note(f"baseline {rev}: not measured, it did not start ({str(exc)[:300]})")
            return []
        self.results["baseline"] = {"rev": rev, "source": source_fingerprint(src.parent)}
        self.targets["baseline"] = {"url": p.url, "path": "/v1/messages?beta=true", "pid": p.pid, "proc": p,
                                    "label": f"nonstop at {rev}, default configuration (the baseline)"}
        return ["baseline"]

    def baseline_source(self, rev: str) -> Path | None:
        """The src/ folder of git revision `rev`, from `git archive` (None, noted, when git
        cannot give it)."""
        try:
            return revision_source(rev, self.work / f"src-{rev}")
        except (OSError, subprocess.CalledProcessError) as exc:
            self.note(f"baseline {rev}: not measured, its source could not be read from git ({exc})")
            return None

    def start_failover(self, name: str, source: Path | None = None, local_extra: str = "") -> Proc:
        """nonstop whose cloud answers every request with a subscription-limit 429 that
        names a reset already past, with one Anthropic-format local backend.
        default_cooldown = 0: a 429 whose unified reset has already passed names no future
        deadline, so QuotaState would otherwise keep the cloud out for default_cooldown
        (300 s). With 0 the deadline is "now": the next request probes the cloud again
        and meets the next 429. Every request therefore takes the full path:
        cloud -> 429 -> classify -> state change -> local backend -> answer."""
        local = ANTHROPIC_LOCAL.format(url=self.up["local"]) + local_extra
        return self.start_nonstop(name, self.up["limit-past"], cloud_extra=PROBE_EVERY_REQUEST, local=local,
                                  source=source)

    def start_peers(self) -> list[str]:
        import peers

        names = []
        self.results["peers"] = {}
        for name in ("litellm", "spillway"):
            info: dict[str, Any] = {"spec": peers.SPECS[name]}
            self.results["peers"][name] = info
            why = peers.install(name)
            if why:
                info["error"] = why
                self.note(f"{name}: not measured: {why}")
                continue
            folder = self.work / name
            folder.mkdir(exist_ok=True)
            try:
                peer = peers.STARTERS[name](self.up["ok"], free_port(), folder)
            except Exception as exc:  # any failure is reported, not hidden
                info["error"] = f"could not start: {exc}"[:1500]
                self.note(f"{name}: not measured: could not start ({str(exc)[:300]})")
                continue
            self.procs.append(peer.proc)
            from harness import http_post

            problem = peers.check(peer, http_post)
            info.update({"version": peer.version, "label": peer.label, "url": peer.url, "path": peer.path})
            if problem:
                info["error"] = f"started, but its answers were wrong: {problem}"
                self.note(f"{name}: not measured: {problem[:300]}")
                continue
            # Peers are much slower: their rounds are bounded in time rather than count.
            self.targets[name] = {"url": peer.url, "path": peer.path, "pid": peer.proc.pid, "label": peer.label,
                                  "max_seconds": self.plan.peer_round_seconds}
            names.append(name)
            if name == "litellm":
                # The same process, its plain Anthropic pass-through route.
                pt = {"url": peer.url, "path": "/anthropic/v1/messages?beta=true", "pid": peer.proc.pid,
                      "label": "LiteLLM proxy /anthropic pass-through", "max_seconds": self.plan.peer_round_seconds}
                self.targets["litellm-passthrough"] = pt
                probe = peers.Peer("litellm-passthrough", pt["label"], pt["url"], pt["path"], peer.proc)
                problem = peers.check(probe, http_post)
                if problem:
                    self.results["peers"]["litellm-passthrough"] = {"error": problem}
                    self.note(f"litellm pass-through route: not measured: {problem[:300]}")
                    del self.targets["litellm-passthrough"]
                else:
                    self.results["peers"]["litellm-passthrough"] = {"version": peer.version, "label": pt["label"]}
                    names.append("litellm-passthrough")
            info["idle_rss_mb"] = rss_mb(peer.proc.pid, with_children=True)
        return names

    def held_streams(self, target: str, pid: int, url: str) -> dict[str, Any]:
        """RSS growth while N slow streams are held open, after the same warm-up each time.
        The streams are opened one after the other (loadgen.py), so that the growth is what
        they hold, not a peak of requests being parsed together."""
        assert self.lg is not None
        n = self.plan.streams_held
        # Exercise the ordinary paths first so that the baseline includes their one-off costs.
        self.measure(target, stream=True, concurrency=16, requests=300)
        self.measure(target, stream=False, concurrency=16, requests=300)
        time.sleep(0.5)
        before = rss_mb(pid)
        got = self.lg.call({"op": "hold", "url": url, "streams": n, "hold": 120})
        time.sleep(2.0)
        during = rss_mb(pid)
        cpu0 = cpu_seconds(pid)
        time.sleep(3.0)
        trickle_cpu = (cpu_seconds(pid) - cpu0) / 3.0
        self.lg.call({"op": "release"})
        time.sleep(1.0)
        after = rss_mb(pid)
        opened = got.get("opened", 0)
        return {
            "streams": n, "opened": opened, "failed": got.get("failed", 0), "error_sample": got.get("error_sample", ""),
            "rss_before_mb": before, "rss_open_mb": during, "rss_after_release_mb": after,
            "per_stream_kb": (during - before) * 1024 / opened if opened else None,
            "cpu_share_while_held": trickle_cpu,
        }

    def memory_per_stream(self, baseline: list[str]) -> None:
        """Also the baseline's, when it runs: it then comes to the c=1 rounds with the same
        history as this code's instance (the same requests, streams held and let go), so
        the comparison there is of the code, not of what each process went through."""
        print(f"memory per open stream ({self.plan.streams_held} slow streams)", flush=True)
        self.results["memory"]["streams"] = self.held_streams("nonstop", self.main.pid, self.main.url)
        self.results["memory"]["forwarder_streams"] = self.held_streams("forwarder", self.fwd.pid, self.fwd.url)
        for b in baseline:
            t = self.targets[b]
            self.results["memory"]["baseline_streams"] = self.held_streams(b, t["pid"], t["url"])

    def latency_sweep(self, names: list[str], at_c1: list[str]) -> None:
        """`at_c1`: targets measured at concurrency 1 only (the baseline)."""
        out = []
        for stream in (False, True):
            for c in CONCURRENCY:
                n = self.plan.requests[c]
                these = names + at_c1 if c == 1 else names
                print(f"latency: {'stream' if stream else 'json'} c={c} x{n} x{self.plan.rounds} rounds: "
                      + ", ".join(these), flush=True)
                keep = self.paired_rounds.setdefault((stream, c), {}) if (stream, c) in PAIRED else None
                res = self.rounds(these, self.plan.rounds, keep=keep, stream=stream, concurrency=c, requests=n)
                out.append({"stream": stream, "concurrency": c, "payload": "large", "requests_per_round": n,
                            "targets": res})
                self.results["latency"] = out

    def forwarder_pairs(self) -> None:
        """The comparisons the targets make with the bare forwarder (PAIRED: c=1 JSON, 64
        unpaced streams), again on fresh pairs of processes, pooled with the main pair's
        rounds of the latency sweep.

        Two processes of the same code, started alike, differ by several per cent of CPU
        per request for their whole life (their heaps, hash seeds, where the scheduler put
        them), and so does every nonstop and every forwarder: the main pair's ratio carries
        the draw of that one pair, and moved from 1.23x to 1.64x between runs of the same
        code. The pooled figures (every round of every pair: percentiles over all their
        requests, the median of their rounds' CPU per request) carry less of it; each
        pair's own figures are reported beside them. The pairs start in alternating order."""
        extra = self.plan.forwarder_pairs
        pooled = {sc: {m: list(rs) for m, rs in self.paired_rounds.get(sc, {}).items() if m in ("nonstop", "forwarder")}
                  for sc in PAIRED}
        per_pair = {sc: [_pair_figures(pooled[sc])] if len(pooled[sc]) == 2 else [] for sc in PAIRED}
        print(f"nonstop against the forwarder on {extra} more fresh pairs: "
              + ", ".join(("stream" if st else "json") + f" c={c}" for st, c in PAIRED)
              + f", x{self.plan.rounds} rounds each", flush=True)
        for k in range(extra):
            procs = {}
            for m in (("nonstop", "forwarder") if k % 2 == 0 else ("forwarder", "nonstop")):
                name = f"pair{k + 1}-{m}"
                procs[m] = self.start_forwarder(name) if m == "forwarder" else self.start_nonstop(name, self.up["ok"])
                self.targets[f"pair-{m}"] = {"url": procs[m].url, "path": "/v1/messages?beta=true",
                                             "pid": procs[m].pid, "label": f"fresh pair {k + 1}: {m}"}
            for stream, c in PAIRED:
                keep: dict[str, list[dict[str, Any]]] = {}
                order = ["pair-forwarder", "pair-nonstop"] if k % 2 == 0 else ["pair-nonstop", "pair-forwarder"]
                self.rounds(order, self.plan.rounds, keep=keep, stream=stream, concurrency=c,
                            requests=self.plan.requests[c])
                got = {m: keep[f"pair-{m}"] for m in ("nonstop", "forwarder")}
                per_pair[(stream, c)].append(_pair_figures(got))
                for m, rs in got.items():
                    pooled[(stream, c)].setdefault(m, []).extend(rs)
            for p in procs.values():
                self.stop(p)
            for m in ("nonstop", "forwarder"):
                del self.targets[f"pair-{m}"]
        self.results["pairs"] = {
            "pairs": 1 + extra, "rounds_per_pair": self.plan.rounds,
            "scenarios": [{"stream": st, "concurrency": c, "requests_per_round": self.plan.requests[c],
                           "per_pair": per_pair[(st, c)],
                           "targets": {m: summarize(rs) for m, rs in pooled[(st, c)].items()}}
                          for st, c in PAIRED if len(pooled[(st, c)]) == 2]}

    def paced_streams(self, names: list[str]) -> None:
        """64 concurrent streams at a model's pace: each sends its head, then a delta every
        25 ms for one second (40 deltas). The saturating rounds above measure queueing;
        this one measures what nonstop adds while it holds 64 live streams. The clients start
        1/64 s apart, so that requests arrive spread out as independent sessions' would."""
        n = self.plan.paced_requests
        headers = PACED
        print(f"paced streams: c=64, 40 deltas over 1 s each, x{n} x{self.plan.rounds} rounds", flush=True)
        res = self.rounds(names, self.plan.rounds, stream=True, concurrency=64, requests=n, headers=headers,
                          stagger=1.0)
        self.results["paced"] = {"stream": True, "concurrency": 64, "payload": "large", "requests_per_round": n,
                                 "interval_s": 0.025, "duration_s": 1.0, "targets": res}

    def throughput_small(self, names: list[str]) -> None:
        n = self.plan.throughput_requests
        print(f"throughput: small requests, json, c=64 x{n} x{self.plan.rounds} rounds", flush=True)
        res = self.rounds(names, self.plan.rounds, stream=False, concurrency=64, requests=n, payload="small")
        self.results["throughput_small"] = {"stream": False, "concurrency": 64, "payload": "small",
                                            "requests_per_round": n, "targets": res}

    def log_cost(self) -> None:
        """What the request log costs: nonstop as configured, and the same with `[log]
        enabled = false`; the difference in CPU per request.

        Both are driven at once in every round (measure_together), so the two numbers of a
        round come from the same seconds of the same machine: rounds taken one after the
        other differed by ±60 µs per request with the machine's drift, which buried a cost
        of tens of µs. Two processes started alike still differ by up to ±17 µs (their
        heaps, hash seeds, where the scheduler put them), so the rounds are spread over
        several fresh pairs, started in alternating order, and the median is over all of
        them. Fresh ones, not the main instance: that one has served every round before
        (a log of tens of thousands of rows, an older heap) and would measure age as well.
        Per thread (schedstat, ns): the main thread's difference and the other threads'
        (the log's writer thread) say where the cost falls."""
        names = ["nonstop-log-on", "nonstop-log-off"]
        labels = {"nonstop-log-on": "nonstop, default configuration, started for the log rounds",
                  "nonstop-log-off": "nonstop, default configuration but [log] enabled = false"}
        n, pairs, per_pair = self.plan.log_requests, self.plan.log_pairs, max(1, self.plan.rounds - 1)
        # One session each (JSON, then streams). Not 64 clients: two saturated processes
        # fight for the two cores, and whichever gets fewer queues more requests into each
        # wake-up, so their CPU per request differs by ±130 µs with which one the scheduler
        # favoured, which measures the scheduler rather than the log.
        scenarios = ((False, 1), (True, 1))
        got: dict[tuple[bool, int], dict[str, list[dict[str, Any]]]] = {sc: {m: [] for m in names} for sc in scenarios}
        threads = {m: {"main": 0.0, "other": 0.0, "requests": 0} for m in names}
        kinds = ", ".join(("stream" if st else "json") + f" c={c}" for st, c in scenarios)
        print(f"request log cost: {pairs} fresh pairs x {per_pair} rounds x ({kinds}) x{n} requests each, "
              "both driven at once", flush=True)
        for k in range(pairs):
            procs = {}
            for m in (names if k % 2 == 0 else names[::-1]):
                procs[m] = self.start_nonstop(f"{m}-{k}", self.up["ok"], log=m == "nonstop-log-on")
                self.targets[m] = {"url": procs[m].url, "path": "/v1/messages?beta=true", "pid": procs[m].pid,
                                   "label": labels[m]}
            before = {m: thread_cpu(p.pid) for m, p in procs.items()}
            for stream, c in scenarios:
                for r in range(per_pair):
                    order = names if (k + r) % 2 == 0 else names[::-1]
                    res = self.measure_together(order, stream=stream, concurrency=c, requests=n)
                    for m in names:
                        got[(stream, c)][m].append(res[m])
                        threads[m]["requests"] += res[m]["issued"] + res[m]["warmup"]
            for m, p in procs.items():
                main, other = thread_cpu(p.pid)
                threads[m]["main"] += main - before[m][0]
                threads[m]["other"] += other - before[m][1]
                self.stop(p)
        out = []
        for (stream, c), per in got.items():
            targets = {}
            for m, rs in per.items():
                targets[m] = summarize(rs)
                targets[m]["cpu_rounds"] = [r["cpu_us_per_request"]["target"] for r in rs]
            out.append({"stream": stream, "concurrency": c, "targets": targets})
        self.results["log_cost"] = out
        self.results["log_method"] = {"together": True, "pairs": pairs, "rounds_per_pair": per_pair,
                                      "threads_us_per_request": {
                                          m: {"main": t["main"] / t["requests"] * 1e6, "other": t["other"] / t["requests"] * 1e6}
                                          for m, t in threads.items() if t["requests"]}}
        if self.args.variants:  # their rounds compare against a log-off instance
            off = self.start_nonstop("nonstop-log-off", self.up["ok"], log=False)
            self.targets["nonstop-log-off"] = {"url": off.url, "path": "/v1/messages?beta=true", "pid": off.pid,
                                               "label": labels["nonstop-log-off"]}

    def variants(self) -> None:
        """Configurations beside the default one, in the same rounds: what each part of
        the default configuration costs. They explain the headline numbers, never replace them."""
        names = ["direct", "forwarder", "nonstop", "nonstop-log-off"]
        p = self.start_nonstop("nonstop-no-local", self.up["ok"], local="")
        self.targets["nonstop-no-local"] = {"url": p.url, "path": "/v1/messages?beta=true", "pid": p.pid,
                                            "label": "nonstop without a [[local]] backend (the 2026-11-25 set-up)"}
        names.append("nonstop-no-local")
        out: dict[str, Any] = {"labels": {n: self.targets[n]["label"] for n in names}, "scenarios": []}
        for stream, c, payload in ((False, 1, "large"), (True, 64, "large"), (False, 64, "small")):
            n = self.plan.requests[c] if payload == "large" else self.plan.throughput_requests
            print(f"variants: {'stream' if stream else 'json'} c={c} {payload} x{n}: " + ", ".join(names), flush=True)
            out["scenarios"].append({"stream": stream, "concurrency": c, "payload": payload, "targets": self.rounds(
                names, self.plan.rounds, stream=stream, concurrency=c, requests=n, payload=payload)})
        self.stop(p)
        self.results["variants"] = out

    def local_relay(self) -> None:
        """A local model's stream relayed: the cloud out, a local server sending exactly N
        deltas at a fixed pace; its total time and its token rate at the client, direct and
        through nonstop (interleaved, one stream at a time)."""
        interval, count = RELAY_INTERVAL, RELAY_DELTAS
        port = self.ports["local-paced"]
        url = f"http://127.0.0.1:{port}"
        p = self.start_nonstop("nonstop-local-relay", self.up["limit"], local=DEFAULT_LOCAL.format(url=url))
        self.targets["_mark"] = {"url": p.url, "path": "/v1/messages?beta=true", "pid": None}
        self.measure("_mark", stream=True, concurrency=1, requests=1, warmup=0)  # the cloud is now out
        self.targets["paced-direct"] = {"url": url, "path": "/v1/messages?beta=true", "pid": None,
                                        "label": f"local server, direct ({count} deltas, one every {interval * 1000:.0f} ms)"}
        self.targets["paced-nonstop"] = {"url": p.url, "path": "/v1/messages?beta=true", "pid": p.pid,
                                         "label": "the same, through nonstop (cloud out)"}
        n = self.plan.relay_requests
        print(f"local stream relay: {count} deltas at {interval * 1000:.0f} ms, x{n} x{self.plan.rounds} rounds", flush=True)
        res = self.rounds(["paced-direct", "paced-nonstop"], self.plan.rounds, stream=True, concurrency=1,
                          requests=n, warmup=2, count_deltas=True)
        self.results["local_relay"] = {"interval_s": interval, "deltas": count, "targets": res}
        self.stop(p)

    def stop(self, p: Proc) -> None:
        p.stop()
        if p in self.procs:
            self.procs.remove(p)

    def failover(self) -> None:
        """(a) a subscription-limit 429 each time, then the local answer. Beside the
        default configuration, one whose local server counts every request (count_tokens =
        "server"): the round trip a request near its window pays (the benchmark's request
        is far inside the default 32k window, where "auto" does not ask).

        Measured on `failover_sets` fresh pairs of instances, one pair after the other, and
        pooled: one process can draw badly for its whole life (its place on the cores, its
        heap), and the failover's few hundred µs moved across the target's limit between
        two runs of one code with a single pair. Each set's own figure is kept too."""
        names = ["cloud-429", "local-direct", "nonstop-failover", "nonstop-failover-counted"]
        self.targets["cloud-429"] = {"url": self.up["limit-past"], "path": "/v1/messages?beta=true", "pid": None,
                                     "label": "the 429, direct", "kw": {"expect": 429}}
        self.targets["local-direct"] = {"url": self.up["local"], "path": "/v1/messages?beta=true", "pid": None,
                                        "label": "the local server, direct"}
        kept: dict[str, dict[str, list[dict[str, Any]]]] = {"stream": {}, "json": {}}
        seen = {"stream": [0, 0], "json": [0, 0]}  # the 429s nonstop met, the requests it served
        per_set: dict[str, list[float]] = {"stream": [], "json": []}
        sets = self.plan.failover_sets
        for k in range(sets):
            if k:  # the last set stays up: the profile reads it
                for n in ("nonstop-failover", "nonstop-failover-counted"):
                    self.stop(self.targets[n]["proc"])
            suffix = f"-{k}" if k else ""
            fo = self.start_failover("nonstop-failover" + suffix)
            counted = self.start_failover("nonstop-failover-counted" + suffix, local_extra='count_tokens = "server"\n')
            self.targets["nonstop-failover"] = {"url": fo.url, "path": "/v1/messages?beta=true", "pid": fo.pid, "proc": fo,
                                                "label": "through nonstop: 429, then local"}
            self.targets["nonstop-failover-counted"] = {
                "url": counted.url, "path": "/v1/messages?beta=true", "pid": counted.pid, "proc": counted,
                "label": "through nonstop: 429, then local, the local server counting each request first"}
            self.results["failover_config"] = fo.extra["config"]
            for stream in (True, False):
                mode = "stream" if stream else "json"
                print(f"failover: {mode} c=1" + (f", set {k + 1} of {sets}" if sets > 1 else ""), flush=True)
                before = self.stats()
                res = self.rounds(names, self.plan.failover_rounds, stream=stream, concurrency=1,
                                  requests=self.plan.failover_requests, keep=kept[mode])
                after = self.stats()
                via = sum(res[n]["requests_with_warmup"] for n in ("nonstop-failover", "nonstop-failover-counted"))
                met = after.get("POST /v1/messages limit-past", 0) - before.get("POST /v1/messages limit-past", 0)
                seen[mode][0] += met - res["cloud-429"]["requests_with_warmup"]
                seen[mode][1] += via
                per_set[mode].append(report.failover_added(res))
        out = {}
        for mode in ("stream", "json"):
            out[mode] = {"targets": {n: summarize(rs) for n, rs in kept[mode].items()},
                         "cloud_429s_seen_by_nonstop": seen[mode][0], "requests_through_nonstop": seen[mode][1],
                         "added_per_set": per_set[mode]}
        self.results["failover"] = out

    def local_path(self) -> None:
        """(b) the cloud already out: local answers through nonstop vs direct, for an
        Anthropic-format and an OpenAI-format local server (the latter is translated)."""
        la = ANTHROPIC_LOCAL.format(url=self.up["local"])
        lo = f'[[local]]\nname = "fake-openai"\nurl = "{self.up["local"]}"\napi = "openai"\nmodel = "local-model"\n'
        a = self.start_nonstop("nonstop-local", self.up["limit"], local=la)
        o = self.start_nonstop("nonstop-openai", self.up["limit"], local=lo)
        # One request marks the cloud out (its 429 names a reset an hour away).
        for p in (a, o):
            self.targets["_mark"] = {"url": p.url, "path": "/v1/messages?beta=true", "pid": None}
            self.measure("_mark", stream=False, concurrency=1, requests=3, warmup=0)
        status_a = orjson.loads(http_get(a.url + "/health")[1])
        self.targets["local-direct"] = {"url": self.up["local"], "path": "/v1/messages?beta=true", "pid": None,
                                        "label": "Anthropic-format local server, direct"}
        self.targets["nonstop-local"] = {"url": a.url, "path": "/v1/messages?beta=true", "pid": a.pid,
                                         "label": "through nonstop, cloud out (Anthropic-format local)"}
        self.targets["openai-direct"] = {"url": self.up["local"], "path": "/v1/chat/completions", "pid": None,
                                         "label": "OpenAI-format local server, direct",
                                         "kw": {"payload": "openai"}}
        self.targets["nonstop-openai"] = {"url": o.url, "path": "/v1/messages?beta=true", "pid": o.pid,
                                          "label": "through nonstop, cloud out (OpenAI-format local, translated)"}
        names = ["local-direct", "nonstop-local", "openai-direct", "nonstop-openai"]
        out: dict[str, Any] = {"cloud_state": status_a.get("cloud")}
        for stream in (True, False):
            print(f"local path: {'stream' if stream else 'json'} c=1", flush=True)
            before = self.stats()
            out["stream" if stream else "json"] = {"targets": self.rounds(
                names, self.plan.failover_rounds, stream=stream, concurrency=1, requests=self.plan.failover_requests)}
            after = self.stats()
            out["stream" if stream else "json"]["cloud_requests_meanwhile"] = (
                after.get("POST /v1/messages limit", 0) - before.get("POST /v1/messages limit", 0))
        self.results["local_path"] = out

    def growth(self) -> None:
        total = self.plan.growth_requests
        steps = 20
        each = max(1, total // steps)
        print(f"memory growth: {total} requests through nonstop (c=32, json and stream alternating)", flush=True)
        samples = [{"requests": 0, "rss_mb": rss_mb(self.main.pid)}]
        done = 0
        errors = 0
        t0 = time.monotonic()
        for i in range(steps):
            res = self.measure("nonstop", stream=bool(i % 2), concurrency=32, requests=each, warmup=0)
            done += res["issued"]
            errors += res["errors"]
            samples.append({"requests": done, "rss_mb": rss_mb(self.main.pid)})
        base = samples[max(1, steps // 10)]["rss_mb"]  # after the first 10%: warmed up
        end = samples[-1]["rss_mb"]
        span = samples[-1]["requests"] - samples[max(1, steps // 10)]["requests"]
        self.results["memory"]["growth"] = {
            "requests": done, "errors": errors, "seconds": time.monotonic() - t0, "samples": samples,
            "rss_after_warmup_mb": base, "rss_end_mb": end, "growth_mb": end - base,
            "bytes_per_request": (end - base) * 1024 * 1024 / span if span else None,
        }

    def inprocess(self) -> None:
        print("in process: planning and the request log", flush=True)
        n, rows = (3000, 1000) if self.mode == "smoke" else (20000, 4000)
        r = subprocess.run([sys.executable, str(HERE / "inprocess.py"), "--n", str(n), "--rows", str(rows),
                            "--rounds", "2" if self.mode == "smoke" else "4"],
                           capture_output=True, text=True, cwd=str(ROOT), timeout=900)
        try:
            self.results["inprocess"] = orjson.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, orjson.JSONDecodeError):
            self.results["inprocess"] = {"error": (r.stderr or r.stdout)[-1000:]}

    def translation(self) -> None:
        print("translation: OpenAI -> Anthropic stream, one core", flush=True)
        r = subprocess.run([sys.executable, str(HERE / "translate.py"), "--seconds", str(self.plan.translate_seconds)],
                           capture_output=True, text=True, cwd=str(ROOT), timeout=300)
        try:
            self.results["translation"] = orjson.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, orjson.JSONDecodeError):
            self.results["translation"] = {"error": (r.stderr or r.stdout)[-1000:]}

    def profile(self) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            self.note("profile: py-spy is not installed (pip install py-spy); skipped")
            return
        out_dir = Path(self.args.out_dir) if self.args.out_dir else HERE / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        profiles = {}
        seconds = 10 if self.mode == "full" else 4
        cases = [("json-c64", "nonstop", False, 64), ("stream-c64", "nonstop", True, 64),
                 ("json-c1", "nonstop", False, 1), ("failover-stream-c1", "nonstop-failover", True, 1)]
        for name, target, stream, c in cases:
            pid = self.targets[target]["pid"]
            raw = self.work / f"profile-{name}.txt"
            print(f"profile: py-spy on {target}, {name}, {seconds}s", flush=True)
            spy_proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds),
                                         "--rate", "250", "--nonblocking", "--gil", "--format", "raw", "-o", str(raw)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            plan_max = self.plan.max_round_seconds
            self.plan.max_round_seconds = seconds - 1.0
            try:
                self.measure(target, stream=stream, concurrency=c, requests=1_000_000, warmup=0)
            finally:
                self.plan.max_round_seconds = plan_max
            try:
                _, err = spy_proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
                err = b""
            if not raw.exists():
                self.note(f"profile {name}: py-spy wrote nothing: {err.decode(errors='replace')[-300:]}")
                continue
            kept = out_dir / f"profile-{self.results['date']}-{self.mode}-{name}.txt"
            shutil.copy(raw, kept)
            profiles[name] = report.summarize_profile(raw.read_text(errors="replace"))
            profiles[name]["file"] = str(kept.relative_to(ROOT)) if kept.is_relative_to(ROOT) else str(kept)
        self.results["profile"] = profiles

    def finish_memory(self) -> None:
        time.sleep(1.0)
        m = self.results["memory"]
        m["idle_rss_end_mb"] = rss_mb(self.main.pid)
        m["peak_rss_mb"] = peak_rss_mb(self.main.pid)

    def run(self) -> int:
        try:
            self.setup()
            if self.args.only_log:
                self.log_cost()
                self.inprocess()
            else:
                names = ["direct", "forwarder", "nonstop"]
                if self.args.peers:
                    names += self.start_peers()
                baseline = self.start_baseline() if self.args.baseline or self.mode == "full" else []
                self.memory_per_stream(baseline)
                self.latency_sweep(names, baseline)
                for b in baseline:
                    self.stop(self.targets[b]["proc"])
                self.forwarder_pairs()
                self.paced_streams(names)
                self.throughput_small(names)
                self.log_cost()
                if self.args.variants:
                    self.variants()
                self.failover()
                self.local_path()
                self.local_relay()
                self.growth()
                if self.args.profile:
                    self.profile()
                self.finish_memory()
                self.translation()
                self.inprocess()
                if self.args.peers:
                    for name in ("litellm", "spillway"):
                        t = self.targets.get(name)
                        if t and t.get("pid"):
                            self.results["peers"][name]["peak_rss_mb"] = peak_rss_mb(t["pid"], with_children=True)
                            self.results["peers"][name]["rss_end_mb"] = rss_mb(t["pid"], with_children=True)
        finally:
            self.results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
            with contextlib.suppress(OSError), open("/proc/loadavg") as fh:
                self.results["load_at_end"] = " ".join(fh.read().split()[:3])
            for p in self.procs:
                if not p.alive():
                    self.note(f"{p.name} exited early with {p.proc.returncode}: {p.tail(500)}")
            self.stop_all()
        self.results["targets_met"] = [t for t in report.targets(self.results)
                                       if t["value"] is not None or not self.args.only_log]  # only what ran
        self.results["labels"] = {k: v.get("label", k) for k, v in self.targets.items() if not k.startswith("_")}
        return self.write()

    def write(self) -> int:
        out_dir = Path(self.args.out_dir) if self.args.out_dir else HERE / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.results["date"] + ("-smoke" if self.mode == "smoke" else "")
        if self.args.long:
            stem += "-long"
        if self.args.peers:
            stem += "-peers"
        if self.args.only_log:
            stem += "-log"
        (out_dir / f"{stem}.json").write_bytes(
            orjson.dumps(self.results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        md = report.render(self.results)
        (out_dir / f"{stem}.md").write_text(md)
        print()
        print(md)
        print(f"written: {out_dir / (stem + '.md')} and .json")
        errors = report.harness_errors(self.results)
        if errors:
            print("benchmark problems:\n  - " + "\n  - ".join(errors), file=sys.stderr)
            return 1
        if self.args.strict and any(not t["met"] for t in self.results["targets_met"]):
            return 3
        return 0


def _pair_figures(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One pair's own figures, nonstop's and the forwarder's in its rounds (report.py
    compares them)."""
    s = {m: summarize(rs) for m, rs in rounds.items()}
    return {"ttfb_p50": {m: x["ttfb_p50"] for m, x in s.items()}, "ttfb_p99": {m: x["ttfb_p99"] for m, x in s.items()},
            "cpu_us_per_request": {m: x["cpu_us_per_request"]["target"] for m, x in s.items()},
            "errors": sum(x["errors"] for x in s.values())}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ttfb = [x for r in rounds for x in r["ttfb"]]
    total = [x for r in rounds for x in r["total"]]
    out: dict[str, Any] = {
        "n": len(ttfb),
        "requests_total": sum(r["issued"] for r in rounds),
        "requests_with_warmup": sum(r["issued"] + r["warmup"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "error_sample": next((r["error_sample"] for r in rounds if r["error_sample"]), ""),
        "ttfb_p50": percentile(ttfb, 50), "ttfb_p99": percentile(ttfb, 99),
        "total_p50": percentile(total, 50), "total_p99": percentile(total, 99),
        "rps": median([r["rps"] for r in rounds]),
        "rps_rounds": [round(r["rps"], 1) for r in rounds],
        "round_ttfb_p50": [round(percentile(r["ttfb"], 50), 4) for r in rounds],
        "rate_p50": percentile([x for r in rounds for x in r.get("rates", [])], 50),
        "deltas_p50": percentile([x for r in rounds for x in r.get("deltas", [])], 50),
        "backends": {},
    }
    for r in rounds:
        for b, k in r.get("backends", {}).items():
            out["backends"][b] = out["backends"].get(b, 0) + k
    for key in ("cpu_us_per_request", "cpu_share"):
        procs = rounds[0].get(key, {}).keys()
        out[key] = {p: median([r[key][p] for r in rounds]) for p in procs}
    out["others_cores"] = median([r["others_cores"] for r in rounds])
    rss = [r["rss_mb"] for r in rounds if "rss_mb" in r]
    if rss:
        out["rss_mb"] = max(rss)
    return out


def _in_fresh_netns(argv: list[str]) -> None:
    """Re-run inside a new network namespace with only loopback: the peers (and
    everything else) then cannot reach anything but 127.0.0.1, whatever they try."""
    inner = " ".join(_quote(a) for a in [sys.executable, *argv, "--in-netns"])
    os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c", f"ip link set lo up && exec {inner}"])


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def main() -> int:
    p = argparse.ArgumentParser(description="nonstop's benchmark suite")
    p.add_argument("--smoke", action="store_true", help="the short version (about a minute)")
    p.add_argument("--long", action="store_true", help="memory growth over 100,000 requests")
    p.add_argument("--peers", action="store_true", help="also measure LiteLLM's proxy and claude-spillway")
    p.add_argument("--profile", action="store_true", help="py-spy profiles of nonstop under load")
    p.add_argument("--variants", action="store_true",
                   help="also measure nonstop without its request log and without a local backend")
    p.add_argument("--growth-requests", type=int, default=0, help="requests in the memory growth run")
    p.add_argument("--only-log", action="store_true",
                   help="only the request log's rounds (both instances fresh) and the in-process costs")
    p.add_argument("--out-dir", help="where to write the results (default benchmarks/results)")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    p.add_argument("--no-netns", action="store_true", help="with --peers: do not isolate the network")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--baseline", metavar="REV", default="",
                   help="also run the code of this git revision in the c=1 rounds (full runs: the one in "
                        "results/BASELINE; 'none' for no baseline)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the .md beside a results .json (after report changes)")
    args = p.parse_args()
    if args.render:
        src = Path(args.render)
        results = orjson.loads(src.read_bytes())
        results["targets_met"] = report.targets(results)
        src.with_suffix(".md").write_text(report.render(results))
        print(f"written: {src.with_suffix('.md')}")
        return 0
    try:
        import nonstop  # noqa: F401
    except ImportError:
        print("nonstop is not importable from this Python; run `make bench` or .venv/bin/python benchmarks/run.py",
              file=sys.stderr)
        return 2
    if args.peers and not args.in_netns and not args.no_netns:
        import peers

        for name in peers.SPECS:  # installing needs the network: before isolating
            why = peers.install(name)
            if why:
                print(f"{name}: {why}", file=sys.stderr)
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip") and subprocess.run(
                ["unshare", "--net", "--", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0:
            _in_fresh_netns(sys.argv)
        else:
            print("note: not root or no unshare/ip: peers run without network isolation", file=sys.stderr)
    bench = Bench(args)
    if args.in_netns:
        bench.results["notes"].append("ran in a fresh network namespace (loopback only)")
    with contextlib.suppress(KeyboardInterrupt):
        return bench.run()
    bench.stop_all()
    return 130


if __name__ == "__main__":
    sys.exit(main())
