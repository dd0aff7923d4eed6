/* finite.c — is every element of a float buffer finite? The training loop asks it of every
 * gradient after every step (and of the parameters it loads), the embedded trainer (embed.c)
 * likewise, so it is one tight pass with no branch per element.
 *
 * An element is inf or NaN exactly when its exponent bits are all ones. The test looks at
 * 32-bit words, sixteen at a time in a 64-byte vector (a GCC and clang extension), OR-ing the
 * results: every word of f32; the high word of f64 (little-endian), whose low word is masked
 * to 0, which never counts. The words left over after the vectors are OR-ed the same way.
 * The pass is cloned for AVX-512 and AVX2 (GCC's ifunc picks one when the program starts;
 * the runtime is built for any x86-64): with SSE2's 16-byte vectors it was bound by its
 * instructions at 12 bytes a cycle, even on data in L1, and took 2.6% of an MLP step.
 * Not in libnnembed.a (NNRT_NO_IFUNC), whose object links with nothing but libc: the
 * clones' resolver needs libgcc's __cpu_model. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "nnrt_internal.h"

typedef uint32_t Words __attribute__((vector_size(64))); /* one AVX-512 register */
enum { WORDS = sizeof(Words) / 4 };
_Static_assert(WORDS == 16, "PAIRS below writes 16 lanes");
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "nnrt_all_finite reads the high word of an f64 at the odd index"
#endif

/* Whether some word w of `words` at p has (w & mask) + bias >= 2^31, where mask and bias are
 * (m0, b0) for even words and (m1, b1) for odd ones: with mask 0x7fffffff (the sign dropped)
 * and bias 2^31 - 0x7f800000, exactly when w's exponent bits are all ones; with 0 and 0,
 * never. An and, an add and an or per vector, with no compare: four vectors a round, each
 * OR-ed into its own sum so that the ORs do not wait on each other, and the top bits tested
 * once at the end. mask and bias are constants
 * where this is inlined (with a mask built at run time, GCC once compared lane by lane in
 * scalar code: 13% of an MLP step). */
#define PAIRS(e, o) {e, o, e, o, e, o, e, o, e, o, e, o, e, o, e, o}
static inline __attribute__((always_inline)) bool any_word(const char *p, int64_t words,
                                                            uint32_t m0, uint32_t b0,
                                                            uint32_t m1, uint32_t b1) {
  const Words mask = PAIRS(m0, m1), bias = PAIRS(b0, b1);
  Words s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, a, b, c, d;
  int64_t i = 0;
  for (; i + 4 * WORDS <= words; i += 4 * WORDS) {
    memcpy(&a, p + 4 * i, sizeof a);
    memcpy(&b, p + 4 * (i + WORDS), sizeof b);
    memcpy(&c, p + 4 * (i + 2 * WORDS), sizeof c);
    memcpy(&d, p + 4 * (i + 3 * WORDS), sizeof d);
    s0 |= (a & mask) + bias;
    s1 |= (b & mask) + bias;
    s2 |= (c & mask) + bias;
    s3 |= (d & mask) + bias;
  }
  uint32_t any = 0;
  for (; i < words; i++) { /* i % WORDS: the tail starts at a multiple of WORDS */
    uint32_t w;
    memcpy(&w, p + 4 * i, 4);
    any |= (w & mask[i % WORDS]) + bias[i % WORDS];
  }
  s0 |= s1 | s2 | s3;
  for (int k = 0; k < WORDS; k++)
    any |= s0[k];
  return any >> 31;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(NNRT_NO_IFUNC)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
bool nnrt_all_finite(const void *base, int64_t n, int64_t elem_size) {
  const uint32_t abs = 0x7fffffffu; /* f64: the high word's exponent is 0x7ff00000 */
  if (elem_size == 4)
    return !any_word(base, n, abs, 0x80000000u - 0x7f800000u, abs, 0x80000000u - 0x7f800000u);
  return !any_word(base, 2 * n, 0, 0, abs, 0x80000000u - 0x7ff00000u);
}
