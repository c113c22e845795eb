"""The no-op processor: exits 0 at once and writes nothing, to measure dispatch alone (bench/dispatch_bench.py)."""

if __name__ == "__main__":
    raise SystemExit(0)
