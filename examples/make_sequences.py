#!/usr/bin/env python3
"""make_sequences.py — synthetic "reviews" for the recurrent examples (sentiment_rnn.nn,
sentiment_lstm.nn): CSV rows of 8 token ids from a vocabulary of 10, then a 0/1 label.

Tokens 3..9 are filler; every review holds token 1 ("good") once and token 2 ("bad") once,
and its label is 1 when "good" comes last, 0 when "bad" does. Only the order tells, so a
bag of words cannot do better than chance; a recurrent model can learn it.

usage: make_sequences.py [ROWS] [SEED] > reviews.csv      (defaults 512, 1)
"""
import random
import sys

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 512
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
for _ in range(rows):
    ids = [rng.randrange(3, 10) for _ in range(8)]
    a, b = rng.sample(range(8), 2)
    ids[a], ids[b] = 1, 2
    print(",".join(map(str, ids + [int(a > b)])))
