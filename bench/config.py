"""The three sizes of the benchmark: full, --quick and --smoke."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

ALL_CONDITIONS = (
    "baseline",
    "closewait-all",
    "closewait-exporter-all",
    "closewait-pid-server",
    "closewait-pid-client",
    "tcpstates",
    "bpftrace-print",
    "bpftrace-count",
    "floor-map",
    "floor-raw",
)


# The tracers whose BPF program runs on every state change (the printing
# ones pay mostly in user space, which the churn section shows).
KERNEL_CONDITIONS = (
    "closewait-all",
    "closewait-exporter-all",
    "closewait-pid-client",
    "bpftrace-count",
    "floor-map",
    "floor-raw",
)


@dataclass(frozen=True)
class Config:
    mode: str
    # churn: rounds x every condition once, each between two baselines
    # (bracket) or after one; each slot runs both variants for warmup + window s
    churn_rounds: int
    churn_window_s: float
    churn_warmup_s: float
    churn_prewarm_s: float  # once, before the first round (TIME_WAIT steady state)
    churn_bracket: bool
    churn_settle_s: float  # after a tracer is attached, before measuring
    churn_budget_s: float  # extra rounds for noisy conditions while this lasts
    churn_conditions: tuple[str, ...]
    concurrency: int
    # kernel-side cost per tracepoint hit (kernel.bpf_stats_enabled)
    kernel_conditions: tuple[str, ...]
    kernel_rounds: int
    # leaks at scale: (sockets, processes holding them, how they end: "close"
    # for every socket close()d one by one, "exit" for the processes exiting)
    scale_cases: tuple[tuple[int, int, str], ...]
    scale_interval_s: float
    scale_refreshes: int  # refreshes in the CPU-per-refresh window
    snapshot_reps: int
    # start-up
    startup_reps: int
    # detection latency
    detect_leaks: int
    detect_min_age_s: float
    detect_interval_s: float
    # the exporter (section 5): idle settle, leaks for the scrape, soak (0: none)
    exporter_settle_s: float = 3.0
    exporter_leaks: int = 10_000
    soak_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Config(
    mode="full",
    churn_rounds=3,
    churn_window_s=2.0,
    churn_warmup_s=0.5,
    churn_prewarm_s=3.0,
    churn_bracket=True,
    churn_settle_s=1.0,
    churn_budget_s=390.0,
    churn_conditions=ALL_CONDITIONS,
    concurrency=16,
    kernel_conditions=KERNEL_CONDITIONS,
    kernel_rounds=2,
    scale_cases=((10_000, 1, "close"), (19_000, 1, "exit"), (100_000, 6, "close")),
    scale_interval_s=2.0,
    scale_refreshes=3,
    snapshot_reps=3,
    startup_reps=3,
    detect_leaks=8,
    detect_min_age_s=2.0,
    detect_interval_s=1.0,
)

# The smaller sizes say only how they differ from the full run.
QUICK = replace(
    FULL,
    mode="quick",
    churn_rounds=1,
    churn_window_s=1.2,
    churn_warmup_s=0.3,
    churn_prewarm_s=2.0,
    churn_settle_s=0.5,
    churn_budget_s=75.0,
    kernel_rounds=1,
    scale_cases=((10_000, 1, "close"),),
    scale_interval_s=1.0,
    scale_refreshes=2,
    snapshot_reps=1,
    startup_reps=2,
    detect_leaks=3,
    detect_min_age_s=1.0,
)

# Tiny sizes: proves that every piece still runs and that closewait's output
# still parses. Conditions that share code with another one (the --pid of
# the client, the counting bpftrace) are left out to stay under 30 s.
SMOKE = replace(
    QUICK,
    mode="smoke",
    churn_window_s=0.3,
    churn_warmup_s=0.1,
    churn_prewarm_s=0.2,
    churn_bracket=False,
    churn_settle_s=0.2,
    churn_budget_s=0.0,
    churn_conditions=tuple(
        c for c in ALL_CONDITIONS if c not in ("closewait-pid-client", "bpftrace-count")
    ),
    concurrency=4,
    kernel_conditions=("closewait-all", "closewait-exporter-all", "floor-map"),
    scale_cases=((200, 2, "close"),),
    scale_interval_s=0.5,
    scale_refreshes=1,
    startup_reps=1,
    detect_leaks=1,
    detect_min_age_s=0.5,
    detect_interval_s=0.5,
    exporter_settle_s=1.5,
    exporter_leaks=200,
)

MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}
