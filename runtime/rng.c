/* rng.c — the runtime's random numbers: takes a seed and a stream id, gives reproducible
 * xoshiro256** streams (raw 64-bit words, uniform doubles in [0,1), unbiased integers below n,
 * normal deviates by Box–Muller, Fisher–Yates shuffles). Each parameter initialises from its
 * own stream and shuffling uses another, so adding a parameter or changing the epoch count
 * never shifts the others. */
#include <math.h>

#include "nnrt_internal.h"

/* splitmix64: the recommended way to expand one 64-bit seed into xoshiro state. */
static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void nnrt_rng_seed(NnRng *r, uint64_t seed, uint64_t stream) {
  /* Mix seed and stream through splitmix separately so (s, t) and (t, s) differ. */
  uint64_t a = seed, b = stream ^ 0xD1B54A32D192ED03ull;
  uint64_t x = splitmix64(&a) ^ rotl(splitmix64(&b), 17);
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&x);
  if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3]))
    r->s[0] = 1; /* the all-zero state is xoshiro's one fixed point */
  r->has_spare = 0;
  r->spare = 0;
}

uint64_t nnrt_rng_u64(NnRng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double nnrt_rng_uniform(NnRng *r) { return (double)(nnrt_rng_u64(r) >> 11) * 0x1.0p-53; }

uint64_t nnrt_rng_below(NnRng *r, uint64_t n) {
  /* Rejection keeps every value equally likely even when n does not divide 2^64. */
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do
    x = nnrt_rng_u64(r);
  while (x >= limit);
  return x % n;
}

double nnrt_rng_normal(NnRng *r) {
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  double u1 = 1.0 - nnrt_rng_uniform(r); /* (0, 1]: log(u1) stays finite */
  double u2 = nnrt_rng_uniform(r);
  double rad = sqrt(-2.0 * log(u1));
  double th = 2.0 * 3.14159265358979323846 * u2;
  r->spare = rad * sin(th);
  r->has_spare = 1;
  return rad * cos(th);
}

void nnrt_shuffle(int64_t *v, int64_t n, NnRng *r) {
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)nnrt_rng_below(r, (uint64_t)i + 1);
    int64_t t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
}
