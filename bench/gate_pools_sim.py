#!/usr/bin/env python3
"""How often a gate call needs a new connection, under three ways of pooling gate connections
across call workers: one shared pool, a pool per worker, and callgate's rule (src/gate.rs,
`Cadence`: a worker's own pool once its calls to the gate average a gap under 250 ms, kept
while under 1 s and its connection was used within 3.5 s; the shared pool otherwise).

Calls to one gate arrive at random (Poisson) at `rate` calls/s, each on a random worker; a
pooled connection idle for over 4 s is retired (POOL_IDLE_TIMEOUT). Prints the share of calls
that open a new connection (for an HTTPS gate, a TLS handshake added to post-dial delay).

    python3 bench/gate_pools_sim.py
"""
import random

IDLE = 4.0  # POOL_IDLE_TIMEOUT, s
ENTER, LEAVE, STAY, MAX_GAP = 0.25, 1.0, 3.5, 10.0


def simulate(rate, workers, seconds=100_000, seed=1):
    rnd = random.Random(seed)
    t, calls = 0.0, 0
    new = {"shared": 0, "per worker": 0, "callgate": 0}
    shared_used, own_used = -1e9, [-1e9] * workers  # the two pure strategies
    cg_shared_used, cg_local_used = -1e9, [None] * workers  # callgate's pools
    last_call, average = [None] * workers, [MAX_GAP] * workers
    while t < seconds:
        t += rnd.expovariate(rate)
        w = rnd.randrange(workers)
        calls += 1
        new["shared"] += t - shared_used > IDLE
        shared_used = t
        new["per worker"] += t - own_used[w] > IDLE
        own_used[w] = t
        gap = MAX_GAP if last_call[w] is None else min(t - last_call[w], MAX_GAP)
        last_call[w] = t
        average[w] += (gap - average[w]) / 8
        in_use = cg_local_used[w] is not None and t - cg_local_used[w] < STAY
        if average[w] < (LEAVE if in_use else ENTER):
            new["callgate"] += cg_local_used[w] is None or t - cg_local_used[w] > IDLE
            cg_local_used[w] = t
        else:
            new["callgate"] += t - cg_shared_used > IDLE
            cg_shared_used = t
    return {k: v / calls for k, v in new.items()}


print("| calls/s | workers | new connections: one shared pool | a pool per worker | callgate |")
print("|---:|---:|---:|---:|---:|")
for workers in (2, 4):
    for rate in (0.1, 0.5, 1, 2, 4, 8, 16):
        r = simulate(rate, workers)
        print(f"| {rate} | {workers} | {r['shared']:.2%} | {r['per worker']:.2%} | {r['callgate']:.2%} |")
