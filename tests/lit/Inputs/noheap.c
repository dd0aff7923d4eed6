/* noheap.c — linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free: any heap
 * call from the program's own objects (not libc's internals) stops it with a message. */
#include <stdio.h>
#include <stdlib.h>

static void refuse(const char *what) {
  fprintf(stderr, "HEAP USED: %s\n", what);
  abort();
}

void *__wrap_malloc(size_t n) { (void)n; refuse("malloc"); return NULL; }
void *__wrap_calloc(size_t n, size_t k) { (void)n; (void)k; refuse("calloc"); return NULL; }
void *__wrap_realloc(void *p, size_t n) { (void)p; (void)n; refuse("realloc"); return NULL; }
void __wrap_free(void *p) { if (p) refuse("free"); }
