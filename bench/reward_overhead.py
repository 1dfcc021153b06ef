"""Per-call overhead of isolated reward scoring vs calling the function in-process.

Run:  python bench/reward_overhead.py [--n 256] [--repeats 20] [--isolation auto|sandbox|namespaces|hooks]

Prints the median milliseconds per call of a trivial reward (``len(completion) % 2``):
- direct: the function called in this process (the peer; no isolation);
- isolated, one sample per score() call (round trip latency);
- isolated, per-sample signature, N samples per score() call (batched messages);
- isolated, batched (TRL) signature, N samples per score() call;
and the ratio isolated/direct; then the cold start of a one-function set (worker start, load,
first call) in each isolation mode that works here. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from openrft.errors import RewardError
from openrft.rewards import RewardSet

SOURCE = """
def per_sample(prompt, completion, example):
    return float(len(completion) % 2)

def batched(prompts, completions, **columns):
    return [float(len(c) % 2) for c in completions]
"""


def _median_ms_per_call(fn, calls_per_round: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / calls_per_round * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="samples per batch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--isolation", default="auto", help="isolation mode of the per-call figures")
    args = parser.parse_args()
    n = args.n
    prompts, completions = ["p"] * n, [f"completion {i}" for i in range(n)]
    examples = [{"answer": str(i)} for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trivial.py"
        path.write_text(SOURCE)
        ns: dict = {}
        exec(SOURCE, ns)
        direct = _median_ms_per_call(
            lambda: [
                ns["per_sample"](p, c, e) for p, c, e in zip(prompts, completions, examples, strict=True)
            ],
            n,
            args.repeats,
        )
        specs = [
            {"name": "per_sample", "function": f"{path}:per_sample"},
            {"name": "batched", "function": f"{path}:batched"},
        ]
        with RewardSet(specs, isolation=args.isolation) as rs:
            rs.score(prompts, completions, examples)  # warm up: load in every worker
            single = _median_ms_per_call(
                lambda: rs.score(prompts[:1], completions[:1], examples[:1], ["per_sample"]),
                1,
                args.repeats * 5,
            )
            per_sample = _median_ms_per_call(
                lambda: rs.score(prompts, completions, examples, ["per_sample"]), n, args.repeats
            )
            batched = _median_ms_per_call(
                lambda: rs.score(prompts, completions, examples, ["batched"]), n, args.repeats
            )
            iso = rs.isolation()[0]
    print(f"isolation: mode={iso['mode']} limits={iso['limits']}")
    print(f"direct in-process call             : {direct:8.4f} ms/call (peer)")
    print(f"isolated, 1 sample per score()     : {single:8.4f} ms/call  ratio {single / direct:8.0f}x")
    print(
        f"isolated, per-sample fn, N={n:<5}   : {per_sample:8.4f} ms/call  ratio {per_sample / direct:8.0f}x"
    )
    print(f"isolated, batched fn,    N={n:<5}   : {batched:8.4f} ms/call  ratio {batched / direct:8.0f}x")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trivial.py"
        path.write_text(SOURCE)
        for mode in ("sandbox", "namespaces", "hooks"):
            starts = []
            for _ in range(5):
                t0 = time.perf_counter()
                try:
                    with RewardSet(
                        [{"name": "r", "function": f"{path}:per_sample"}], pool_size=1, isolation=mode
                    ) as rs:
                        rs.score(prompts[:1], completions[:1], examples[:1])
                except RewardError as e:
                    print(f"cold start, {mode:<10}: unavailable ({e})")
                    break
                starts.append((time.perf_counter() - t0) * 1e3)
            else:
                print(
                    f"cold start, {mode:<10}: {statistics.median(starts):8.1f} ms (set up, load, first call)"
                )


if __name__ == "__main__":
    main()
