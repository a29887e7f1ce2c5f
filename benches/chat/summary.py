"""Summarises benches/chat/run.sh: one table per window (medians of the rounds; lost and
out-of-order lines summed), the quote table, and each server's best against the other's.

    python3 summary.py RESULTS QUOTE_CONCURRENCY WINDOW...
"""
import statistics
import sys

vals = {}
for line in open(sys.argv[1]):
    if "=" in line and not line.startswith("#"):
        k, v = line.strip().split("=", 1)
        try:
            vals.setdefault(k, []).append(float(v))
        except ValueError:
            pass


def get(server, key, how):
    xs = vals.get(f"{server}.{key}", [0.0])
    return sum(xs) if how == "sum" else statistics.median(xs)


def table(title, suffix, rows):
    print(f"\n{title}\n")
    print(f"| {'':30} | {'oxicorn':>12} | {'twisted':>12} | {'ratio':>7} |")
    print(f"|{'-' * 32}|{'-' * 14}|{'-' * 14}|{'-' * 9}|")
    for label, key, how, fmt, kind in rows:
        o, t = get("oxicorn" + suffix, key, how), get("twisted" + suffix, key, how)
        ratio = ""
        if kind == "x" and t:
            ratio = f"{o / t:.1f}x"
        elif kind == "/" and o:
            ratio = f"1/{t / o:.1f}"
        print(f"| {label:30} | {fmt.format(o):>12} | {fmt.format(t):>12} | {ratio:>7} |")


CHAT = [
    ("chat delivered lines/s", "chat.lines_per_sec", "median", "{:,.0f}", "x"),
    ("chat p50 latency ms", "chat.p50_ms", "median", "{:.1f}", ""),
    ("chat p99 latency ms", "chat.p99_ms", "median", "{:.1f}", ""),
    ("chat lost lines", "chat.lost", "sum", "{:.0f}", ""),
    ("chat out-of-order lines", "chat.out_of_order", "sum", "{:.0f}", ""),
    ("chat peak RSS MiB (all procs)", "chat.peak_mib", "median", "{:.1f}", ""),
    ("chat server CPU us/delivery", "chat.cpu_us_per_delivery", "median", "{:.3f}", "/"),
]
best = {}
for w in sys.argv[3:]:
    table(f"chat, window {w}", f".w{w}", CHAT)
    print()
    for server in ("oxicorn", "twisted"):
        rate = get(f"{server}.w{w}", "chat.lines_per_sec", "median")
        if rate > best.get(server, (0, ""))[0]:
            best[server] = (rate, w)
        rounds = " ".join(
            f"{v / 1e6:.2f}M" for v in vals.get(f"{server}.w{w}.chat.lines_per_sec", [])
        )
        print(f"{server} rounds, lines/s: {rounds}")
table(
    "quote",
    "",
    [
        (f"quote connections/s (c={sys.argv[2]})", "quote.conns_per_sec", "median", "{:,.0f}", "x"),
        ("quote errors", "quote.errors", "sum", "{:.0f}", ""),
        ("quote peak RSS MiB", "quote.peak_mib", "median", "{:.1f}", ""),
    ],
)
(o, ow), (t, tw) = best["oxicorn"], best["twisted"]
bad = sum(sum(v) for k, v in vals.items() if k.endswith((".lost", ".out_of_order")))
print(
    f"\nbest against best: oxicorn {o:,.0f} lines/s (window {ow}) / twisted {t:,.0f} lines/s"
    f" (window {tw}) = {o / t:.1f}x; lost or out-of-order lines in all runs: {bad:.0f}"
)
