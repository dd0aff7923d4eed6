#!/usr/bin/env python3
"""rss.py — runs a command, passes its output through, then prints its peak resident set size
(`peak_rss_mb=N`) on a line of its own. usage: rss.py CMD [ARGS...]"""
import resource
import subprocess
import sys

rc = subprocess.call(sys.argv[1:])
print("peak_rss_mb=%.0f" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
sys.exit(rc)
