"""The wall time a perfect worker gets on the stragglers bench's fake Gemini (issue 12, target 6).

    python -m bench.stragglers_floor [--images 100] [--in-flight 20] [--latency-s 2]
                                     [--draws 200] [--slow-429]

A discrete-event simulation of `bench/stragglers.py`'s fake (a 429 every fifth call with a
1 s retry delay, a 503 at the first call of every ninth prompt, every answer but a 429 after
the latency; with `--slow-429` the 429s too) against a worker with no CPU cost that keeps
every call slot busy whenever an image is ready, gives a freed slot to a due retry before any
first call (as `worker/slots.py`), takes images in set order, and backs off a 503 by full
jitter from 1 s (as the Gemini provider). Prints the wall and the ratio wall / (model calls x
latency / in-flight) over `--draws` draws of that jitter: what the bench's ratio can reach.
"""

import argparse
import heapq
import random
import statistics
from dataclasses import dataclass

from bench.stragglers import FLAKY, prompt_for

QUOTA_EVERY = 5
RETRY_DELAY_S = 1.0
BACKOFF_BASE_S = 1.0


@dataclass(frozen=True)
class Outcome:
    wall_s: float
    calls: int
    model_calls: int


def simulate(
    images: int, in_flight: int, latency_s: float, slow_429: bool, rng: random.Random
) -> Outcome:
    flaky = [FLAKY in prompt_for(index) for index in range(images)]
    seen = [0] * images  # calls per prompt, as the fake counts them
    backoffs = [0] * images
    answers: list[tuple[float, int, str, int]] = []  # (time, order, outcome, image)
    retries: list[tuple[float, int, int]] = []  # (due, order, image)
    order = calls = model_calls = done = next_first = 0
    free, now, wall = in_flight, 0.0, 0.0

    def call(image: int) -> None:
        nonlocal calls, model_calls, free, order
        calls += 1
        seen[image] += 1
        free -= 1
        order += 1
        if calls % QUOTA_EVERY == 0:
            model_calls += slow_429
            answer = (now + latency_s if slow_429 else now, order, "429", image)
        else:
            model_calls += 1
            outcome = "503" if flaky[image] and seen[image] == 1 else "done"
            answer = (now + latency_s, order, outcome, image)
        heapq.heappush(answers, answer)

    def fill() -> None:
        nonlocal next_first
        while free > 0:
            if retries and retries[0][0] <= now:
                call(heapq.heappop(retries)[2])
            elif next_first < images:
                call(next_first)
                next_first += 1
            else:
                return

    fill()
    while done < images:
        if free > 0 and retries and (not answers or retries[0][0] < answers[0][0]):
            now = retries[0][0]
            fill()
            continue
        now, _, outcome, image = heapq.heappop(answers)
        free += 1
        order += 1
        if outcome == "done":
            done, wall = done + 1, now
        elif outcome == "429":
            heapq.heappush(retries, (now + RETRY_DELAY_S, order, image))
        else:
            backoffs[image] += 1
            ceiling = BACKOFF_BASE_S * 2 ** (backoffs[image] - 1)
            heapq.heappush(retries, (now + rng.uniform(0, ceiling), order, image))
        fill()
    return Outcome(wall, calls, model_calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--latency-s", type=float, default=2.0)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--slow-429", action="store_true", help="429s after the latency too")
    args = parser.parse_args()
    outcomes = [
        simulate(args.images, args.in_flight, args.latency_s, args.slow_429, random.Random(draw))
        for draw in range(args.draws)
    ]
    walls = [outcome.wall_s for outcome in outcomes]
    ratios = [
        outcome.wall_s / (outcome.model_calls * args.latency_s / args.in_flight)
        for outcome in outcomes
    ]
    rule = "429s after the latency (old rule)" if args.slow_429 else "429s at once"
    print(f"{args.images} images, {args.in_flight} in flight, {args.latency_s:g} s, {rule}:")
    print(
        f"wall median {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}); "
        f"ratio median {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}); "
        f"calls {min(o.calls for o in outcomes)}-{max(o.calls for o in outcomes)}, model calls "
        f"{min(o.model_calls for o in outcomes)}-{max(o.model_calls for o in outcomes)}"
    )


if __name__ == "__main__":
    main()
